"""The paper's verifier ensemble: the mean rank of a candidate under several verifiers.

Ma et al. 2025 rank every candidate under each verifier and average the ranks,
because the verifiers' scales differ (aesthetic about 1-10, CLIPScore about 0.3). We normalise
each member's rank over the pool to [0, 1] (0 = worst, 1 = best) and take a weighted mean
(equal weights by default, as in the paper), so the ensemble score is in [0, 1] and 1 means
best in the pool under every member.

Ties get the average of the ranks they span (fractional ranking): two candidates tied for the
top of four both get rank 3.5 of 4, i.e. (3.5 - 1) / 3 = 5/6. NaN scores rank below every
number (and tie with each other). A pool of one candidate scores 1.

A rank means something only within its pool: ``score`` ranks the batch it is given. The engine
ranks the whole pool instead by calling ``member_scores`` per batch and ``combine`` over every
candidate so far.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from noisesearch import Condition, hookimpl

if TYPE_CHECKING:
    import torch

    from noisesearch.registry import Entry, Register

#: The paper's text-to-image ensemble, less ImageReward (not built in).
DEFAULT_MEMBERS = ("aesthetic", "clip-score")
NAME = "ensemble"


def _as_list(value: Sequence[Any] | str | float) -> list[Any]:
    """Lists as given, or comma-separated on the command line (``members=aesthetic,clip-score``);
    one number is a list of one (``weights=1``: the count check then names the real problem)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return list(value)


def _weights(weights: Sequence[float] | str | float | None, members: int) -> list[float]:
    """One non-negative weight per member (equal by default), checked before anything loads."""
    from noisesearch.errors import ConfigError

    if weights is None:
        return [1.0] * members
    try:
        numbers = [float(w) for w in _as_list(weights)]
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{NAME}.weights", f"must be numbers, got {weights!r}") from None
    if len(numbers) != members:
        raise ConfigError(f"{NAME}.weights", f"{len(numbers)} weights for {members} members")
    if any(not math.isfinite(w) or w < 0 for w in numbers) or sum(numbers) <= 0:
        raise ConfigError(f"{NAME}.weights", f"must be non-negative with a positive sum, got {numbers}")
    return numbers


def _member_entries(
    members: Sequence[str] | str, member_options: Mapping[str, Mapping[str, Any]] | None
) -> list[Entry]:
    """Resolve and check the members without building them (a bad name or option fails here)."""
    from noisesearch.errors import ConfigError
    from noisesearch.plugins import build_registries

    members = _as_list(members)
    if not members or not all(isinstance(name, str) for name in members):
        raise ConfigError(f"{NAME}.members", f"must be a non-empty list of verifier names, got {members!r}")
    if len(set(members)) != len(members):
        raise ConfigError(f"{NAME}.members", f"names a verifier twice: {list(members)}")
    member_options = dict(member_options or {})
    stray = set(member_options) - set(members)
    if stray:
        raise ConfigError(
            f"{NAME}.member_options", f"options for verifiers that are not members: {sorted(stray)}"
        )
    registry = build_registries().verifiers
    entries = []
    for name in members:
        entry = registry.get(name)
        if entry.factory is Ensemble or name == NAME:
            raise ConfigError(f"{NAME}.members", "an ensemble cannot be a member of an ensemble")
        entry.check_options(dict(member_options.get(name, {})))
        entries.append(entry)
    return entries


def normalised_ranks(values: Sequence[float]) -> list[float]:
    """Each value's rank in [0, 1] (1 = largest); ties share their average rank, NaN is lowest."""
    n = len(values)
    if n == 1:
        return [1.0]
    # (is_number, value): NaN sorts below every number, -inf included, and NaNs compare equal.
    keyed = [(0, 0.0) if math.isnan(v) else (1, v) for v in (float(x) for x in values)]
    order = sorted(range(n), key=keyed.__getitem__)
    ranks = [0.0] * n
    start = 0
    while start < n:
        end = start
        while end + 1 < n and keyed[order[end + 1]] == keyed[order[start]]:
            end += 1
        average = (start + end) / 2  # 0-based average rank of the tied run
        for position in range(start, end + 1):
            ranks[order[position]] = average / (n - 1)
        start = end + 1
    return ranks


class Ensemble:
    """Weighted mean of each member verifier's normalised rank over the pool, in [0, 1].

    :param members: verifier names (each built with its own options); a list, or comma-separated.
    :param weights: one non-negative weight per member (a list, comma-separated, or one number
        for one member); default: equal weights, as in the paper.
    :param member_options: options per member name, e.g. ``{"clip-score": {"scale": "clipscore"}}``.
    :param device: torch device passed to every member that takes one (unless its
        member_options set it).
    """

    @classmethod
    def member_names(cls, members: Sequence[str] | str = DEFAULT_MEMBERS, **_: Any) -> list[str]:
        """The verifiers it runs, by name: an evaluator among them is searched on, not held out
        (``noisesearch.registry.searched_names``; read per search, so no registries are built)."""
        return _as_list(members)

    @classmethod
    def describe(
        cls,
        members: Sequence[str] | str = DEFAULT_MEMBERS,
        member_options: Mapping[str, Mapping[str, Any]] | None = None,
        weights: Sequence[float] | str | float | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        """What the ensemble needs: the union of its members' needs (read before loading, so
        the members and their weights are checked there too)."""
        from noisesearch.registry import verifier_requirements

        member_options = member_options or {}
        entries = _member_entries(members, member_options)
        _weights(weights, len(entries))
        needs: set[str] = set()
        for entry in entries:
            needs |= verifier_requirements(entry, dict(member_options.get(entry.name, {})))
        return {"requires": frozenset(needs)}

    def __init__(
        self,
        members: Sequence[str] | str = DEFAULT_MEMBERS,
        weights: Sequence[float] | str | float | None = None,
        member_options: Mapping[str, Mapping[str, Any]] | None = None,
        device: str | None = None,
    ) -> None:
        entries = _member_entries(members, member_options)
        weights = _weights(weights, len(entries))
        self.names = [entry.name for entry in entries]
        self.weights = dict(zip(self.names, weights))
        self.members: dict[str, Any] = {}
        for entry in entries:
            options = dict((member_options or {}).get(entry.name, {}))
            if device is not None and entry.accepts("device"):
                options.setdefault("device", device)
            self.members[entry.name] = entry.create(**options)
        self.requires = frozenset().union(
            *(getattr(member, "requires", frozenset()) for member in self.members.values())
        )
        levels = {
            level
            for member in self.members.values()
            if "trajectory" in getattr(member, "requires", ())
            for level in getattr(member, "trajectory_levels", ())
        }
        self.trajectory_levels = tuple(sorted(levels))

    def member_scores(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each member's raw scores (B,) for this batch."""
        return {
            name: member.score(images, condition, trajectory=trajectory)
            for name, member in self.members.items()
        }

    def take_cost(self) -> dict[str, float]:
        """The counters of the members that keep them (generative judges), summed by name;
        empty when none does."""
        total: dict[str, float] = {}
        for member in self.members.values():
            take_cost = getattr(member, "take_cost", None)
            if callable(take_cost):
                for key, value in take_cost().items():
                    total[key] = total.get(key, 0) + value
        return total

    def combine(self, member_scores: Mapping[str, Sequence[float]]) -> list[float]:
        """The ensemble score of every candidate in a pool, from each member's raw scores.

        ``member_scores[name][i]`` is member ``name``'s score of candidate ``i``; every member
        must be present with the same number of candidates. Returns the weighted mean of the
        members' normalised ranks (see the module docstring for ties), 1 = best.
        """
        missing = [name for name in self.names if name not in member_scores]
        if missing:
            raise ValueError(f"{NAME}: no scores for members {missing}; got {sorted(member_scores)}")
        columns = {name: [float(v) for v in member_scores[name]] for name in self.names}
        sizes = {len(column) for column in columns.values()}
        if len(sizes) != 1:
            raise ValueError(f"{NAME}: members scored different numbers of candidates: "
                             f"{ {name: len(c) for name, c in columns.items()} }")
        size = sizes.pop()
        if size == 0:
            return []
        total = sum(self.weights.values())
        combined = [0.0] * size
        for name, column in columns.items():
            weight = self.weights[name] / total
            for i, rank in enumerate(normalised_ranks(column)):
                combined[i] += weight * rank
        return combined

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The ensemble score of each image, ranked within this batch."""
        import torch

        raw = self.member_scores(images, condition, trajectory)
        columns = {name: values.detach().float().cpu().tolist() for name, values in raw.items()}
        return torch.tensor(self.combine(columns), dtype=torch.float32, device=images.device)


@hookimpl
def register_verifiers(register: Register) -> None:
    register(NAME, Ensemble)
