"""An example noisesearch plugin: the ``example-contrast`` verifier and the
``example-antithetic`` search strategy.

This module is the entry point (``[project.entry-points.noisesearch] example =
"noisesearch_example"``): noisesearch registers it with pluggy and calls its hook
implementations. It registers factories (the classes), never instances, and imports no torch,
so that ``noisesearch plugins`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from noisesearch import hookimpl

from noisesearch_example.antithetic import AntitheticSearch
from noisesearch_example.contrast import ContrastVerifier

if TYPE_CHECKING:
    from noisesearch.registry import Register

__version__ = "0.1.0"
__all__ = ["AntitheticSearch", "ContrastVerifier"]


@hookimpl
def register_verifiers(register: Register) -> None:
    register("example-contrast", ContrastVerifier)


@hookimpl
def register_search_strategies(register: Register) -> None:
    register("example-antithetic", AntitheticSearch)
