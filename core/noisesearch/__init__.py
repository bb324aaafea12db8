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
    "bench",
    "Budget",
    "SearchContext",
    "Trajectories",
    "RunConfig",
]

if TYPE_CHECKING:
    from noisesearch.accounting import Budget
    from noisesearch.api import search
    from noisesearch.bench import bench
    from noisesearch.config import RunConfig
    from noisesearch.context import SearchContext, Trajectories

#: Public names loaded on first use, so that ``import noisesearch`` stays cheap.
_LAZY = {
    "search": "noisesearch.api",
    "bench": "noisesearch.bench",
    "Budget": "noisesearch.accounting",
    "SearchContext": "noisesearch.context",
    "Trajectories": "noisesearch.context",
    "RunConfig": "noisesearch.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        # Found directly from now on (a loop calls noisesearch.search); a name that the import
        # bound to a subpackage (``bench``, a callable module) stays that.
        globals().setdefault(name, value)
        return value
    raise AttributeError(f"module 'noisesearch' has no attribute {name!r}")
