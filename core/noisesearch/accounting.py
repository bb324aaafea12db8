"""What a search may spend (:class:`Budget`) and what it spent (:class:`Usage`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    """At most ``candidates`` final samples and at most ``nfe`` denoiser evaluations
    (summed over samples); ``None`` means no limit of that kind."""

    candidates: int | None = None
    nfe: int | None = None


@dataclass
class Usage:
    """What a run spent, reported beside the result. ``final_nfe`` is spent after the search
    (regenerating winners whose images were not kept) and ``baseline_nfe`` on the baseline
    when no searched candidate was that plain sample (``noisesearch.baseline``); neither is
    charged to the budget."""

    nfe: int = 0
    candidates: int = 0
    verifier_calls: int = 0
    verifier_seconds: float = 0.0
    model_seconds: float = 0.0
    final_nfe: int = 0
    baseline_nfe: int = 0
    #: NFEs of ``nfe`` charged for backward passes through the denoiser (gradient strategies:
    #: ``noisesearch.gradients.BACKWARD_NFE_FACTOR`` per denoiser call); the rest are forward.
    backward_nfe: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "nfe": self.nfe,
            "candidates": self.candidates,
            "verifier_calls": self.verifier_calls,
            "verifier_seconds": round(self.verifier_seconds, 4),
            "model_seconds": round(self.model_seconds, 4),
            "final_nfe": self.final_nfe,
            "baseline_nfe": self.baseline_nfe,
            "forward_nfe": self.nfe - self.backward_nfe,
            "backward_nfe": self.backward_nfe,
        }
