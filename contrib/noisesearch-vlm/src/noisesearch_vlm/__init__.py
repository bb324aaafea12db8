"""noisesearch plugin: vision-language models as rubric judges (verifiers ``vlm`` and ``vlm-api``).

This module is the entry point (``[project.entry-points.noisesearch] vlm = "noisesearch_vlm"``).
It registers the factories only and imports no torch or transformers, so that
``noisesearch plugins`` and ``noisesearch verifiers`` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from noisesearch import hookimpl

from noisesearch_vlm.api import VLMAPIJudge
from noisesearch_vlm.local import VLMJudge

if TYPE_CHECKING:
    from noisesearch.registry import Register

__version__ = "0.1.0"
__all__ = ["VLMAPIJudge", "VLMJudge"]


@hookimpl
def register_verifiers(register: Register) -> None:
    register("vlm", VLMJudge)
    register("vlm-api", VLMAPIJudge)
