"""During a search, the cyclic collector walks only what the search made (noisesearch.heap)."""

from __future__ import annotations

import gc

import pytest

import noisesearch
from noisesearch.heap import search_objects_only


def test_objects_alive_before_are_skipped_and_restored_after() -> None:
    before = gc.get_freeze_count()
    with search_objects_only():
        assert gc.get_freeze_count() > before  # torch, the test session: frozen for the block
        with search_objects_only():  # nested (a bench cell inside a search): no second freeze
            pass
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == before


def test_garbage_made_inside_is_collected_inside() -> None:
    class Node:
        pass

    with search_objects_only():
        node = Node()
        node.cycle = node  # a reference cycle: only the collector frees it
        del node
        assert gc.collect() >= 1


def test_a_process_that_froze_objects_itself_is_left_alone() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with search_objects_only():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_a_search_leaves_nothing_frozen_even_when_it_fails(monkeypatch) -> None:
    from noisesearch_builtin.verifiers import digits_classifiers

    before = gc.get_freeze_count()
    noisesearch.search(model="digits", label=1, candidates=4, steps=4, write=False)
    assert gc.get_freeze_count() == before

    def broken(self, images, condition, trajectory=None):  # noqa: ANN001, ANN202
        raise RuntimeError("broken verifier")

    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", broken)
    with pytest.raises(noisesearch.NoiseSearchError, match="broken verifier"):
        noisesearch.search(model="digits", label=1, candidates=4, steps=4, write=False)
    assert gc.get_freeze_count() == before
