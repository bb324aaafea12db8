"""What a search may spend (:class:`Budget`) and what it spent (:class:`Usage`)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    charged to the budget. ``verifier_cost``: per verifier that reports a cost of its own (a
    generative judge's tokens in and out, replies retried and failed; ``take_cost()``), its
    counters summed over the run, with the seconds it took."""

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
    verifier_cost: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Seconds of named parts of ``model_seconds`` ("prepare": the prompt's encoding, "decode")
    #: and ``verifier_seconds`` ("evaluator"), for run.json's ``timings``; not in :meth:`to_json`.
    phases: dict[str, float] = field(default_factory=dict)

    def add_phase(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to the named phase (see :attr:`phases`)."""
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def add_verifier_cost(self, name: str, cost: dict[str, float]) -> None:
        """Add a verifier's counters (``{"tokens_in": 512, ...}``) to its running totals."""
        totals = self.verifier_cost.setdefault(name, {})
        for key, value in cost.items():
            totals[key] = totals.get(key, 0) + value

    def verifier_cost_since(self, before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """The counters added since ``before`` (a copy of :attr:`verifier_cost`): what the
        journal keeps, so that a resumed run reports the cost of the part it replays."""
        return {
            name: {key: value - before.get(name, {}).get(key, 0) for key, value in cost.items()}
            for name, cost in self.verifier_cost.items()
            if cost != before.get(name)
        }

    def to_json(self) -> dict[str, Any]:
        data = {
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
        if self.verifier_cost:  # only verifiers that report one (no key for the others)
            data["verifier_cost"] = {
                name: {k: round(v, 4) if isinstance(v, float) else v for k, v in cost.items()}
                for name, cost in self.verifier_cost.items()
            }
        return data
