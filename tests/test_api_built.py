"""`search(model=<built model>)`: a loop or a bench builds the model and verifiers once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import noisesearch
from noisesearch.errors import ConfigError
from noisesearch.plugins import build_registries


def test_a_built_model_and_verifiers_give_the_same_search_as_names(tmp_path: Path) -> None:
    registries = build_registries()
    model = registries.models.get("digits").create()
    classifier = registries.verifiers.get("digits-classifier").create()
    by_name = noisesearch.search(model="digits", label=3, candidates=6, write=False)
    built = noisesearch.search(
        model=model, label=3, candidates=6, registries=registries,
        built_verifiers={"digits-classifier": classifier}, output=str(tmp_path / "run"),
    )
    assert built.config.model == "digits"  # the run folder names the model, so replay works
    assert torch.equal(built.best.image, by_name.best.image)
    assert built.best.scores == by_name.best.scores
    assert noisesearch.api.replay_run(tmp_path / "run").identical
    again = noisesearch.search(model=model, label=3, candidates=6, write=False, registries=registries)
    assert torch.equal(again.best.image, by_name.best.image)


def test_an_object_of_no_registered_model_class_is_refused() -> None:
    with pytest.raises(ConfigError, match="model"):
        noisesearch.search(model=object(), label=3, candidates=2, write=False)
