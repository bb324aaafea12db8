"""The base types that plugins implement or receive.

Protocols, not base classes: a plugin's objects only need the attributes and methods below.
Class attributes (``conditioning``, ``requires``) are read *before* anything is built, so the
core can refuse an impossible combination before loading weights or spending compute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from noisesearch import SearchContext
    from noisesearch.sampling import Schedule

#: What a model can be conditioned on.
CONDITIONINGS = ("label", "prompt", "none")
#: What a verifier may need besides the final images.
REQUIREMENTS = ("label", "prompt", "trajectory")


@dataclass(frozen=True)
class Condition:
    """What the user asked for: a text prompt, a class label, or neither."""

    prompt: str | None = None
    label: int | None = None
    negative_prompt: str | None = None

    @property
    def kind(self) -> str:
        if self.prompt is not None:
            return "prompt"
        if self.label is not None:
            return "label"
        return "none"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class Candidate:
    """One scored sample of a search.

    ``recipe`` says how its noise was made (``{"kind": "seed", "seed": 7}`` for a fresh
    Gaussian noise), enough to regenerate it exactly. ``scores`` holds every verifier's raw
    score (and the evaluator's); ``objective`` is what selection ranks by, higher is better.
    """

    index: int
    recipe: dict[str, Any]
    scores: dict[str, float]
    objective: float
    nfe: int
    image: torch.Tensor | None = None  # (3, H, W) in [0, 1]; kept only while in the top-k
    noise: torch.Tensor | None = None  # the initial noise, kept with the image
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {
            "index": self.index,
            "recipe": self.recipe,
            "objective": self.objective,
            "scores": self.scores,
            "nfe": self.nfe,
        }
        if self.extras:
            data["extras"] = self.extras
        return data


@runtime_checkable
class Model(Protocol):
    """A diffusion or flow model that a search can drive, step by step.

    Traits read before the model is built (class attributes, or returned as a dict by a
    classmethod ``describe(**options)`` when they depend on options): ``conditioning``
    (``"label"``, ``"prompt"`` or ``"none"``), ``num_classes`` and ``class_names`` (label
    models), ``default_verifiers``, ``default_evaluator``, ``default_steps``.

    Optional: ``levels(steps) -> list[float]``, the model's own grid (default:
    ``schedule.levels(steps)``); ``preferred_batch_size``; ``device`` and ``dtype``
    (initial noise is drawn on the CPU and moved there).
    """

    conditioning: ClassVar[str]
    schedule: Schedule
    latent_shape: tuple[int, ...]  # one sample, without the batch dimension

    def prepare(self, condition: Condition) -> Any:
        """Encode the condition once per run; the result is passed to every ``denoise``."""

    def denoise(self, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
        """The clean prediction ``x0_hat`` of a batch ``x`` at level ``sigma``.

        Classifier-free guidance, if any, happens here in one batched call.
        """

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, *latent_shape)`` to images ``(B, 3, H, W)`` in ``[0, 1]``."""


@runtime_checkable
class Verifier(Protocol):
    """Scores images; higher is better.

    ``requires`` (class attribute): a subset of ``{"prompt", "label", "trajectory"}``.
    A verifier requiring ``"trajectory"`` also sets ``trajectory_levels``: the levels whose
    decoded clean predictions it receives in ``trajectory``.

    Optional, for generative judges: ``take_cost() -> dict[str, number]`` (counters since the
    last call, e.g. tokens in and out, added to ``run.json``'s ``usage.verifier_cost``);
    ``failures_allowed`` and ``score_tolerance`` (see :class:`noisesearch.testing.VerifierContract`).
    For an evaluator's verdicts: ``predict(images) -> (B,)`` classes (label conditions), with
    ``score_and_predict(images, condition) -> (scores, classes)`` to give both from one forward
    pass (the run then asks ``predict`` only for what its scoring calls did not cover), or
    ``verdict(image, condition) -> dict`` (docs/writing-plugins.md).
    """

    requires: ClassVar[frozenset[str]]

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Scores ``(B,)`` for images ``(B, 3, H, W)`` in ``[0, 1]``."""


def check_scores(name: str, values: object, images: torch.Tensor) -> None:
    """A verifier's scores are a tensor of shape ``(B,)`` for ``images`` ``(B, 3, H, W)``: a list,
    ``None`` or a numpy array is refused by what it is, not by the attribute it lacks."""
    shape = getattr(values, "shape", None)
    if shape is None or not callable(getattr(values, "float", None)):
        raise TypeError(f"verifier {name!r} returned {type(values).__name__}, expected a torch tensor of "
                        f"shape ({images.shape[0]},): one float per image")
    if tuple(shape) != (images.shape[0],):
        raise ValueError(f"verifier {name!r} returned scores of shape {tuple(shape)}, "
                         f"expected ({images.shape[0]},)")


@runtime_checkable
class SearchStrategy(Protocol):
    """Proposes noises and decides what to keep, through a :class:`SearchContext`.

    A strategy never loops over the model itself, writes files or draws progress bars: it
    asks the context to evaluate batches of candidates and reads the remaining budget.
    Optional: ``check_model(model)``, called with the built model before the run folder is
    made, to refuse (``ConfigError``) options that fit only some models.
    """

    def run(self, context: SearchContext) -> None:
        """Spend (at most) the context's budget; the engine keeps the best candidates."""
