"""Registers the diffusers models: ``hf`` (any supported pipeline by hub id or folder) and the
named presets. Importing this module imports neither torch nor diffusers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from noisesearch import hookimpl
from noisesearch_builtin.models.diffusers.hf import hf_pipeline
from noisesearch_builtin.models.diffusers.presets import PRESETS

if TYPE_CHECKING:
    from noisesearch.registry import Register


@hookimpl
def register_models(register: Register) -> None:
    register("hf", hf_pipeline)
    for name, factory in PRESETS.items():
        register(name, factory)
