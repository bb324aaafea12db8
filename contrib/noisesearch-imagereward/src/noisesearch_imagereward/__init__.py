"""noisesearch plugin: the ``imagereward`` verifier (ImageReward on transformers' BLIP classes).

This module is the entry point (``[project.entry-points.noisesearch] imagereward =
"noisesearch_imagereward"``). It registers the factory only and imports no torch, so that
``noisesearch plugins`` and ``noisesearch verifiers`` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from noisesearch import hookimpl

from noisesearch_imagereward.imagereward import ImageRewardVerifier

if TYPE_CHECKING:
    from noisesearch.registry import Register

__version__ = "0.1.0"
__all__ = ["ImageRewardVerifier"]


@hookimpl
def register_verifiers(register: Register) -> None:
    register("imagereward", ImageRewardVerifier)
