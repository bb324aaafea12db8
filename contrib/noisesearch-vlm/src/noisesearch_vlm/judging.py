"""What the local and the API judge share: ask about every image, read the replies strictly,
ask once more about the unreadable ones, and count what it cost.

A reply that still cannot be read scores NaN: the core ranks it below every finite score and
reports it under ``non_finite`` (``noisesearch.finite``), and the judge counts it in
``take_cost()["failures"]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition

from noisesearch_vlm.rubric import RETRY, check_metric, parse_score, rubric_prompt

if TYPE_CHECKING:
    import torch
    from PIL import Image

#: The counters of ``take_cost()``, in the order ``run.json`` shows them.
COUNTERS = ("requests", "tokens_in", "tokens_out", "retries", "failures")
#: At most this much of an unreadable reply is quoted back to the judge when asking again.
QUOTED_REPLY_CHARS = 400


@dataclass
class Reply:
    """One answer of the judge: its text (``None`` when no answer came: an HTTP error, a
    malformed response) and the tokens it cost."""

    text: str | None
    tokens_in: int = 0
    tokens_out: int = 0


def conversation(
    question: str, previous: str | None, image_part: dict[str, Any]
) -> list[dict[str, Any]]:
    """The chat messages about one image: the question; when asking again after an unreadable
    reply, that reply and the reminder of the format (``rubric.RETRY``) follow."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [image_part, {"type": "text", "text": question}]}
    ]
    if previous is not None:
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": previous[:QUOTED_REPLY_CHARS]}]},
            {"role": "user", "content": [{"type": "text", "text": RETRY}]},
        ]
    return messages


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images ``(B, 3, H, W)`` in ``[0, 1]`` as 8-bit RGB pictures: what the judge sees is
    what the run folder's PNG files hold."""
    from PIL import Image

    pixels = (images.detach().float().clamp(0, 1) * 255).round().to("cpu").byte()  # (B, 3, H, W)
    return [Image.fromarray(p.permute(1, 2, 0).numpy(), "RGB") for p in pixels]


class Judge:
    """A rubric judge (base of the local and the API judge): a score from 0 to 10 per image.

    Subclasses implement :meth:`ask`. The retry and the counting live here, once.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"prompt"})
    #: An unreadable reply scores NaN (counted in ``take_cost()["failures"]``).
    failures_allowed: ClassVar[bool] = True
    #: Scores are whole grades; greedy decoding under batch padding can flip a near tie
    #: between neighbouring grades (``noisesearch.testing.VerifierContract``).
    score_tolerance: ClassVar[float] = 1.0

    def __init__(self, metric: str = "overall") -> None:
        self.metric = check_metric(metric)
        self._cost = dict.fromkeys(COUNTERS, 0)

    def ask(
        self, images: Sequence[Image.Image], question: str, previous: Sequence[str | None] | None
    ) -> list[Reply]:
        """One reply per image to ``question`` (``previous``: the unreadable replies, when
        asking again)."""
        raise NotImplementedError

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, Any] | None = None,
    ) -> torch.Tensor:
        import torch

        if condition.prompt is None:
            raise ValueError("a rubric judge scores an image against a prompt; the condition has none")
        pictures = to_pil(images)
        question = rubric_prompt(condition.prompt, self.metric)
        replies = self._asked(pictures, question, None)
        scores = [parse_score(reply.text) for reply in replies]
        again = [i for i, value in enumerate(scores) if value is None]
        if again:
            self._cost["retries"] += len(again)
            previous = [replies[i].text for i in again]
            for i, reply in zip(again, self._asked([pictures[i] for i in again], question, previous)):
                scores[i] = parse_score(reply.text)
        self._cost["failures"] += sum(value is None for value in scores)
        return torch.tensor([math.nan if v is None else float(v) for v in scores])  # (B,)

    def _asked(self, pictures: Sequence[Image.Image], question: str,
               previous: Sequence[str | None] | None) -> list[Reply]:
        replies = self.ask(pictures, question, previous)
        if len(replies) != len(pictures):
            raise RuntimeError(
                f"{type(self).__name__}.ask gave {len(replies)} replies for {len(pictures)} images"
            )
        self._cost["tokens_in"] += sum(r.tokens_in for r in replies)
        self._cost["tokens_out"] += sum(r.tokens_out for r in replies)
        return replies

    def take_cost(self) -> dict[str, int]:
        """The counters since the last call (the core adds them to ``usage.verifier_cost``)."""
        cost, self._cost = self._cost, dict.fromkeys(COUNTERS, 0)
        return cost


def in_chunks(count: int, size: int, work: Callable[[int, int], list[Reply]]) -> list[Reply]:
    """``work(lo, hi)`` over ``[0, count)`` in chunks of at most ``size``, replies in order."""
    replies: list[Reply] = []
    for lo in range(0, count, size):
        replies += work(lo, min(lo + size, count))
    return replies
