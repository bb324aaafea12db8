"""A run that crashes half-way, as a power cut or a broken GPU would: the digits model's searched
verifier fails on one of its calls (tests of resume, the journal and the run folder)."""

from __future__ import annotations

import pytest


def crash_digits_verifier_at(
    monkeypatch: pytest.MonkeyPatch, call: int, message: str = "disk on fire"
) -> None:
    """Make ``digits-classifier``'s ``call``-th score raise ``RuntimeError(message)``; the calls
    before and after it work (``monkeypatch.undo()`` restores the verifier)."""
    from noisesearch_builtin.verifiers import digits_classifiers

    original = digits_classifiers.DigitsClassifier.score
    calls = {"n": 0}

    def flaky(self, images, condition, trajectory=None):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError(message)
        return original(self, images, condition, trajectory)

    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", flaky)
