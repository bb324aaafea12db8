"""noisesearch plugin: the ``pickscore`` verifier (PickScore on transformers' CLIPModel).

This module is the entry point (``[project.entry-points.noisesearch] pickscore =
"noisesearch_pickscore"``). It registers the factory only and imports no torch, so that
``noisesearch plugins`` and ``noisesearch verifiers`` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from noisesearch import hookimpl

from noisesearch_pickscore.pickscore import PickScoreVerifier

if TYPE_CHECKING:
    from noisesearch.registry import Register

__version__ = "0.1.0"
__all__ = ["PickScoreVerifier"]


@hookimpl
def register_verifiers(register: Register) -> None:
    register("pickscore", PickScoreVerifier)
