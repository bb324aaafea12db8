"""The configuration of one search, validated before anything is loaded or computed."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from noisesearch.errors import ConfigError
from noisesearch.sampling import SOLVERS

#: Candidates searched when neither budget is given.
DEFAULT_CANDIDATES = 16


@dataclass
class RunConfig:
    """Everything that defines one search: one configuration + one condition -> one run.

    Budgets: ``candidates`` caps final samples, ``budget_nfe`` caps denoiser evaluations
    summed over candidates; with neither, ``DEFAULT_CANDIDATES`` candidates are searched.
    ``None`` for ``verifiers``, ``evaluator``, ``steps`` and ``label`` means "the model's
    default" (a label is then drawn from ``seed``); ``evaluator="none"`` disables it.
    """

    model: str = "digits"
    strategy: str = "random"
    verifiers: list[str] | None = None
    evaluator: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    label: int | str | None = None  # an index, or a class name for models that have them
    candidates: int | None = None
    budget_nfe: int | None = None
    steps: int | None = None
    solver: str = "ddim"
    seed: int = 0
    batch_size: int | None = None
    top_k: int = 8
    device: str | None = None
    output: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    verifier_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    strategy_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check every value that can be checked without plugins; errors name the field."""
        for name in ("candidates", "budget_nfe", "steps", "batch_size", "top_k"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be a non-negative integer, got {self.seed!r}")
        if self.solver not in SOLVERS:
            raise ConfigError("solver", f"must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.prompt is not None and self.label is not None:
            raise ConfigError("prompt", "give a prompt or a label, not both")
        if self.label is not None and not isinstance(self.label, (int, str)):
            raise ConfigError("label", f"must be a class index or name, got {self.label!r}")
        if isinstance(self.label, int) and self.label < 0:
            raise ConfigError("label", f"must be a non-negative integer, got {self.label!r}")
        if self.verifiers is not None and not self.verifiers:
            raise ConfigError("verifiers", "name at least one verifier")

    def effective_candidates(self) -> int | None:
        if self.candidates is None and self.budget_nfe is None:
            return DEFAULT_CANDIDATES
        return self.candidates

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_output_writable(path: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any compute."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError("output", f"{existing} exists and is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("output", f"cannot write in {existing}")
