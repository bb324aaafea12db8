"""Engine policies that no strategy test reaches: out-of-memory halving and pooled ranks."""

from __future__ import annotations

import torch

from noisesearch.engine import Budget, is_out_of_memory
from noisesearch.testing import GaussianModel, run_strategy
from noisesearch_builtin.search.random_search import RandomSearch


class FakeOutOfMemory(RuntimeError):
    """Stands for torch.cuda.OutOfMemoryError, which a CPU machine cannot raise for real."""

    is_out_of_memory = True


class SmallMemoryModel(GaussianModel):
    """The Gaussian model, on a device that holds at most ``limit`` rows at once."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.refused: list[int] = []

    def denoise(self, x: torch.Tensor, sigma: float, prepared: object) -> torch.Tensor:
        if x.shape[0] > self.limit:
            self.refused.append(x.shape[0])
            raise FakeOutOfMemory(f"CUDA out of memory: tried {x.shape[0]} rows")
        return super().denoise(x, sigma, prepared)


def test_out_of_memory_halves_the_batch_and_the_run_goes_on() -> None:
    model = SmallMemoryModel(limit=5)
    run = run_strategy(RandomSearch(), Budget(candidates=24), model=model, batch_size=16)
    assert len(run.candidates) == 24 and run.usage.candidates == 24
    assert model.refused == [16, 8]  # 16 -> 8 -> 4, which fits; the run keeps 4
    assert run.calls == [4] * 6
    reference = run_strategy(RandomSearch(), Budget(candidates=24), model=GaussianModel(), batch_size=4)
    assert [c.objective for c in run.candidates] == [c.objective for c in reference.candidates]
    assert run.usage.nfe == reference.usage.nfe


def test_other_errors_are_not_mistaken_for_out_of_memory() -> None:
    assert is_out_of_memory(FakeOutOfMemory("x"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(ValueError("shapes do not match"))


def test_an_ensemble_objective_is_ranked_over_the_whole_pool() -> None:
    """The winner has the best mean rank among *all* candidates, not within its own batch;
    a top candidate whose image was dropped earlier is regenerated from its recipe."""
    import noisesearch

    members = ["digits-classifier", "digits-evaluator"]
    result = noisesearch.search(model="digits",
        label=4, candidates=48, batch_size=5, top_k=3, write=False, evaluator="none",
        verifiers=["ensemble"], verifier_options={"ensemble": {"members": members}},
    )
    pool = [scores for _, _, scores in result.history]
    n = len(pool)

    def rank(member: str, i: int) -> float:  # 0 = worst, 1 = best; ties share the average
        value = pool[i][f"ensemble/{member}"]
        below = sum(other[f"ensemble/{member}"] < value for other in pool)
        equal = sum(other[f"ensemble/{member}"] == value for other in pool)
        return (below + (equal - 1) / 2) / (n - 1)

    mean_rank = [sum(rank(m, i) for m in members) / len(members) for i in range(n)]
    assert result.best.index == max(range(n), key=lambda i: (mean_rank[i], -i))
    assert result.best.objective == max(mean_rank)
    assert all(c.image is not None for c in result.top)


def test_resume_after_an_out_of_memory_halving_batches_as_the_run_did(tmp_path, monkeypatch) -> None:
    """The journal holds the halved chunks; resuming must take its chunk sizes from there."""
    import pytest

    import noisesearch
    from noisesearch.api import resume_run
    from noisesearch_builtin.models.digits import DigitsModel
    from noisesearch_builtin.verifiers import digits_classifiers

    original_denoise = DigitsModel.denoise

    def small_memory(self, x, sigma, prepared):  # noqa: ANN001, ANN202
        if x.shape[0] > 4:
            raise FakeOutOfMemory("CUDA out of memory")
        return original_denoise(self, x, sigma, prepared)

    calls = {"n": 0}
    original_forward = digits_classifiers.DigitsEvaluator.log_probs  # under score and score_and_predict

    def crash_once(self, images, grad=False):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return original_forward(self, images, grad)

    monkeypatch.setattr(DigitsModel, "denoise", small_memory)
    monkeypatch.setattr(digits_classifiers.DigitsEvaluator, "log_probs", crash_once)
    out = tmp_path / "run"
    from noisesearch.faults import PluginFailed

    with pytest.raises(PluginFailed, match="verifier 'digits-evaluator' .*RuntimeError: power cut"):
        noisesearch.search(model="digits", label=3, candidates=20, batch_size=8, output=str(out))
    resumed = resume_run(out)
    reference = noisesearch.search(model="digits", label=3, candidates=20, batch_size=4, write=False)
    assert [c.objective for c in resumed.top] == [c.objective for c in reference.top]


def test_trajectory_verifiers_are_refused_with_strategies_that_resample(tmp_path) -> None:
    import pytest

    import noisesearch
    from noisesearch.plugins import build_registries, get_plugin_manager
    from noisesearch.testing import BrightnessVerifier

    class NeedsTrajectory(BrightnessVerifier):
        """Test verifier that reads x0_hat at level 0.5."""

        requires = frozenset({"trajectory"})
        trajectory_levels = (0.5,)

    registries = build_registries(get_plugin_manager(load_entrypoints=False))
    registries.verifiers.add("needs-trajectory", NeedsTrajectory, "test")
    for strategy in ("paths", "smc", "pruning"):
        with pytest.raises(noisesearch.IncompatibleError, match="trajectory"):
            noisesearch.search(model="digits", strategy=strategy, verifiers=["needs-trajectory"], write=False,
                               registries=registries)
    result = noisesearch.search(model="digits", strategy="zero-order", verifiers=["needs-trajectory"],
                                write=False, registries=registries, candidates=5)
    assert result.usage.candidates == 5


def test_an_out_of_memory_error_while_recording_a_batch_fails_the_run_without_retrying(
    tmp_path, monkeypatch
) -> None:
    """The evaluator of a batch's running bests runs while the batch is recorded: halving and
    retrying the chunk there (as for the model and the verifiers) recorded its candidates twice
    and gave their recipes two solve ops. It fails the run instead, saying what to do."""
    import json

    import pytest

    import noisesearch
    from noisesearch.faults import RecordingFailed
    from noisesearch_builtin.verifiers import digits_classifiers

    original_forward = digits_classifiers.DigitsEvaluator.log_probs

    def full(self, images, grad=False):  # noqa: ANN001, ANN202
        raise FakeOutOfMemory("CUDA out of memory")

    monkeypatch.setattr(digits_classifiers.DigitsEvaluator, "log_probs", full)
    out = tmp_path / "run"
    with pytest.raises(RecordingFailed, match="smaller --batch-size") as caught:
        noisesearch.search(model="digits", label=3, candidates=8, batch_size=8, output=str(out))
    assert not is_out_of_memory(caught.value)  # nothing retries it
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "--batch-size" in run["error"]
    lines = (out / "candidates.jsonl").read_text().splitlines()
    assert len(lines) <= 8 and all(len(json.loads(line)["recipe"]["ops"]) == 1 for line in lines)
    monkeypatch.setattr(digits_classifiers.DigitsEvaluator, "log_probs", original_forward)
    again = noisesearch.search(model="digits", label=3, candidates=8, batch_size=8, write=False)
    assert again.usage.candidates == 8


def test_a_verifier_out_of_memory_retry_leaves_no_trace_in_the_journal_or_the_usage(
    tmp_path, monkeypatch
) -> None:
    """The searched verifier runs out of memory on a chunk of 8: the chunk is retried as two of
    4, its NFEs counted once and its solve journaled only with its scores, so a run interrupted
    after the retry resumes to the result of a run at batch size 4 (an orphan solve of 8 in the
    journal made resume fail with a mismatch, and the NFEs were counted twice)."""
    import pytest

    import noisesearch
    from noisesearch.api import resume_run
    from noisesearch.faults import PluginFailed
    from noisesearch_builtin.verifiers import digits_classifiers

    original = digits_classifiers.DigitsClassifier.score
    calls = {"n": 0}

    def flaky(self, images, condition, trajectory=None):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 1:
            raise FakeOutOfMemory("CUDA out of memory")
        if calls["n"] == 4:
            raise RuntimeError("power cut")
        return original(self, images, condition, trajectory)

    common = {"model": "digits", "label": 3, "candidates": 16, "steps": 5, "evaluator": "none"}
    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", flaky)
    out = tmp_path / "run"
    with pytest.raises(PluginFailed, match="power cut"):
        noisesearch.search(**common, batch_size=8, output=str(out))
    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", original)
    resumed = resume_run(out)
    reference = noisesearch.search(**common, batch_size=4, write=False)
    assert [c.objective for c in resumed.top] == [c.objective for c in reference.top]
    assert resumed.usage.nfe == reference.usage.nfe == 16 * 5


def test_an_evaluator_out_of_memory_is_met_by_scoring_in_halves(tmp_path, monkeypatch) -> None:
    """The held-out evaluator runs while a batch is being recorded, which the engine cannot
    retry: it scores its images in halves instead, and the run ends as one without the error
    (the same candidates and winner, the evaluator's scores equal up to batch rounding)."""
    import math

    import noisesearch
    from noisesearch_builtin.verifiers import digits_classifiers

    common = {"model": "digits", "label": 3, "candidates": 16, "batch_size": 16, "steps": 5, "write": False}
    reference = noisesearch.search(**common)
    original_forward = digits_classifiers.DigitsEvaluator.log_probs
    sizes: list[int] = []

    def small(self, images, grad=False):  # noqa: ANN001, ANN202
        sizes.append(images.shape[0])
        if images.shape[0] > 2:
            raise FakeOutOfMemory("CUDA out of memory")
        return original_forward(self, images, grad)

    monkeypatch.setattr(digits_classifiers.DigitsEvaluator, "log_probs", small)
    halved = noisesearch.search(**common)
    assert max(sizes) > 2 and halved.usage.candidates == 16
    assert [c.index for c in halved.top] == [c.index for c in reference.top]
    assert all(len(c.recipe["ops"]) == 1 for c in halved.top)
    for ours, theirs in zip(halved.top, reference.top):
        judge = "digits-evaluator"
        assert math.isclose(ours.scores[judge], theirs.scores[judge], rel_tol=1e-5, abs_tol=1e-6)
    assert halved.verdicts == reference.verdicts


def test_next_seeds_are_the_derived_seeds_in_order_whatever_the_call_sizes() -> None:
    """The engine derives its first seed once (the baseline's) and reuses it: any sequence of
    next_seeds calls gives derive_seeds(run_seed, 0, total) in order."""
    import random

    from noisesearch.engine import Engine, derive_seed, derive_seeds
    from noisesearch.scoring import Scorer
    from noisesearch.testing import BrightnessVerifier
    from noisesearch.types import Condition

    rng = random.Random(0)
    model = GaussianModel()
    for run_seed in (0, 1, 7, 2**62):
        scorer = Scorer({"brightness": BrightnessVerifier()})
        levels = model.schedule.levels(4)
        engine = Engine(model, Condition(), scorer, Budget(candidates=4), levels, seed=run_seed)
        sizes = [rng.choice([0, 0, 1, 2, 5, 16]) for _ in range(12)]
        drawn = [seed for n in sizes for seed in engine.next_seeds(n)]
        assert drawn == derive_seeds(run_seed, 0, sum(sizes))
        assert derive_seed(run_seed, 0) == derive_seeds(run_seed, 0, 1)[0]
    derive_seed(1, 0)  # cached: an equal key of another type (True == 1) is hashed as itself
    assert derive_seed(True, 0) == derive_seeds(True, 0, 1)[0] != derive_seed(1, 0)


def test_a_verifier_out_of_memory_retry_counts_only_the_decodes_that_made_candidates(monkeypatch) -> None:
    """The searched verifier runs out of memory on a chunk of 8, which is then made again as two
    of 4: the decode phase counts the two decodes that made candidates, as the model's time does,
    not the discarded one too (made slow here: counting it made the decode phase longer than the
    model's time, of which it is a part)."""
    import time

    import noisesearch
    from noisesearch_builtin.models.digits import DigitsModel
    from noisesearch_builtin.verifiers import digits_classifiers

    original_score, original_decode = digits_classifiers.DigitsClassifier.score, DigitsModel.decode
    calls = {"n": 0}

    def flaky(self, images, condition, trajectory=None):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 1:
            raise FakeOutOfMemory("CUDA out of memory")
        return original_score(self, images, condition, trajectory)

    def slow_decode(self, x0):  # noqa: ANN001, ANN202
        time.sleep(0.5 if x0.shape[0] == 8 else 0.02)  # the chunk of 8 is the one the error discards
        return original_decode(self, x0)

    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", flaky)
    monkeypatch.setattr(DigitsModel, "decode", slow_decode)
    result = noisesearch.search(model="digits", label=3, candidates=8, batch_size=8, steps=2,
                                evaluator="none", write=False)
    assert calls["n"] == 3  # 8 (out of memory), then 4 and 4
    decode = result.usage.phases["decode"]
    assert 0.04 <= decode <= result.usage.model_seconds
    assert decode < 0.5  # the discarded decode (0.5 s) is not counted
