"""``noisesearch bench``: inference-time scaling measured over a grid of models, strategies,
NFE budgets, searched-on verifiers, a prompt suite and seeds, with held-out evaluators and
verifier-free baselines at the same NFEs (docs/bench.md).

A layer above the API: every cell is one ``search()`` with a prebuilt model, written as an
ordinary run folder. Importing this package is cheap; the work is in :func:`bench`.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from noisesearch.bench.runner import BenchResult

__all__ = ["bench"]


def bench(grid: Any = None, **options: Any) -> BenchResult:
    """Run a bench; see :func:`noisesearch.bench.runner.bench`."""
    from noisesearch.bench.runner import bench as run

    return run(grid, **options)


class _CallableModule(types.ModuleType):
    """``noisesearch.bench`` is this package as soon as any of its modules is imported (Python
    sets the attribute on the parent package), so the package itself runs a bench when called:
    ``noisesearch.bench(...)`` works either way."""

    def __call__(self, grid: Any = None, **options: Any) -> BenchResult:
        return bench(grid, **options)


sys.modules[__name__].__class__ = _CallableModule
