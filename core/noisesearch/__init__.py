"""noisesearch: inference-time scaling for diffusion models by searching noises with verifiers.

The public API. Importing it is cheap (no torch): heavy names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from noisesearch.errors import (
    BudgetExhausted,
    ConfigError,
    DuplicateNameError,
    IncompatibleError,
    NoiseSearchError,
    UnknownNameError,
)
from noisesearch.hookspecs import PROJECT_NAME, hookimpl
from noisesearch.types import Candidate, Condition, Model, SearchStrategy, Verifier

__version__ = "0.1.0"

__all__ = [
    "PROJECT_NAME",
    "BudgetExhausted",
    "Candidate",
    "Condition",
    "ConfigError",
    "DuplicateNameError",
    "IncompatibleError",
    "Model",
    "NoiseSearchError",
    "SearchStrategy",
    "UnknownNameError",
    "Verifier",
    "__version__",
    "hookimpl",
    "search",
]

if TYPE_CHECKING:
    from noisesearch.api import search


def __getattr__(name: str) -> Any:
    if name == "search":
        from noisesearch.api import search

        return search
    raise AttributeError(f"module 'noisesearch' has no attribute {name!r}")
