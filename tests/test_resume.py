"""A real SIGINT leaves a consistent run folder; --resume ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crashes import crash_digits_verifier_at
from processes import with_default_ctrl_c

import noisesearch
from noisesearch.api import resume_run
from noisesearch.journal import read_meta

CLI = str(Path(sys.executable).with_name("noisesearch"))
ARGS = ["run", "--model", "digits", "-q", "--candidates", "1200", "--batch-size", "4", "--seed", "2",
        "--strategy", "random"]


def lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


@pytest.mark.slow
def test_sigint_then_resume_gives_the_result_of_an_uninterrupted_run(tmp_path: Path) -> None:
    interrupted, full = tmp_path / "interrupted", tmp_path / "full"
    process = subprocess.Popen([CLI, *ARGS, "-o", str(interrupted)], stderr=subprocess.PIPE, text=True,
                               preexec_fn=with_default_ctrl_c)
    deadline = time.monotonic() + 120
    while lines(interrupted / "candidates.jsonl") < 100 and process.poll() is None:
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr

    run = json.loads((interrupted / "run.json").read_text())
    assert run["complete"] is False and run["status"] == "interrupted"
    scored = lines(interrupted / "candidates.jsonl")
    assert 100 <= scored < 1200 and run["usage"]["candidates"] == scored
    for line in (interrupted / "candidates.jsonl").read_text().splitlines():
        json.loads(line)  # every line is whole

    resumed = subprocess.run([CLI, "run", "--resume", str(interrupted), "-q"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    subprocess.run([CLI, *ARGS, "-o", str(full)], check=True, timeout=300)

    assert (interrupted / "candidates.jsonl").read_text() == (full / "candidates.jsonl").read_text()
    after, reference = (json.loads((d / "run.json").read_text()) for d in (interrupted, full))
    assert after["complete"] is True and after["best"] == reference["best"]
    assert after["usage"]["nfe"] == reference["usage"]["nfe"]
    assert not (interrupted / "journal").exists()


def test_a_crash_leaves_an_incomplete_run_that_resumes(tmp_path: Path, monkeypatch) -> None:
    """A failing verifier mid-run (a crash, not Ctrl-C) is resumed once it works again."""
    out = tmp_path / "run"
    crash_digits_verifier_at(monkeypatch, 4)
    with pytest.raises(noisesearch.NoiseSearchError, match="verifier 'digits-classifier' .*disk on fire"):
        noisesearch.search(model="digits", label=6, candidates=40, batch_size=8, seed=1, output=str(out))
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is False and run["status"] == "failed" and "disk on fire" in run["error"]
    assert lines(out / "candidates.jsonl") == 24

    monkeypatch.undo()
    journaled = [read_meta(path) for path in sorted((out / "journal").glob("*.safetensors"))]
    resumed = resume_run(out)
    reference = noisesearch.search(model="digits", label=6, candidates=40, batch_size=8, seed=1, write=False)
    assert resumed.best.recipe == reference.best.recipe
    assert [c.objective for c in resumed.top] == [c.objective for c in reference.top]
    assert resumed.usage.nfe == reference.usage.nfe
    # the seconds of the batches the journal served count too, as their NFEs do
    model = sum(m.get("model_seconds", 0.0) for m in journaled if "levels" in m)
    scored = sum(m.get("verifier_seconds", 0.0) for m in journaled if "scores" in m)
    assert model > 0 and scored > 0
    assert resumed.usage.model_seconds >= model and resumed.usage.verifier_seconds >= scored


def test_resume_refuses_a_complete_run(tmp_path: Path) -> None:
    noisesearch.search(model="digits", label=1, candidates=2, output=str(tmp_path / "done"))
    with pytest.raises(noisesearch.ConfigError, match="complete"):
        resume_run(tmp_path / "done")


def test_resume_refuses_a_run_whose_configuration_changed(tmp_path: Path, monkeypatch) -> None:
    from noisesearch_builtin.verifiers import digits_classifiers

    out = tmp_path / "run"

    def crash(self, images, grad=False):  # noqa: ANN001, ANN202
        raise RuntimeError("stop")

    # the evaluator's one forward pass, under score and score_and_predict
    monkeypatch.setattr(digits_classifiers.DigitsEvaluator, "log_probs", crash)
    with pytest.raises(noisesearch.NoiseSearchError, match="stop"):
        noisesearch.search(model="digits", label=2, candidates=16, batch_size=4, output=str(out))
    monkeypatch.undo()
    run = json.loads((out / "run.json").read_text())
    run["config"]["batch_size"] = 3  # the journal's calls no longer line up
    (out / "run.json").write_text(json.dumps(run))
    os.sync()
    # The journal's fingerprint names the change before any call is replayed.
    with pytest.raises(noisesearch.ConfigError, match=r"config\.batch_size \(was 4, now 3\)"):
        resume_run(out)


def test_ctrl_c_between_two_listeners_still_records_the_batch_whole(tmp_path: Path) -> None:
    """A Ctrl-C that lands while a scored batch is being recorded (here: inside the listener
    before the candidates writer) is held until the batch is whole, so that the usage and
    ``candidates.jsonl`` agree; CI once caught a SIGINT in that gap (108 counted, 104 lines)."""
    from noisesearch.accounting import Budget
    from noisesearch.engine import Engine
    from noisesearch.results import CandidatesWriter
    from noisesearch.scoring import Scorer
    from noisesearch.testing import BrightnessVerifier, GaussianModel, default_condition
    from noisesearch_builtin.search.random_search import RandomSearch

    class CtrlCOnFirstBatch:
        def __init__(self) -> None:
            self.sent = False

        def on_candidates(self, candidates, usage) -> None:  # noqa: ANN001
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10**5):  # Python runs the handler here, between two bytecodes
                    pass

    model = GaussianModel()
    writer = CandidatesWriter(tmp_path / "candidates.jsonl")
    engine = Engine(model, default_condition("none", None), Scorer({"objective": BrightnessVerifier()}),
                    Budget(candidates=12), model.schedule.levels(4), batch_size=4, seed=0,
                    listeners=[CtrlCOnFirstBatch(), writer])
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.run(RandomSearch())
    finally:
        signal.signal(signal.SIGINT, previous)
        writer.close()
    assert engine.usage.candidates == lines(tmp_path / "candidates.jsonl") == 4


def test_resuming_where_a_journaled_batch_no_longer_fits_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    """The journal fixes each resumed chunk's size, so an out-of-memory error while re-decoding
    one cannot be met by halving (that retried the same chunk forever): the run fails, saying so."""
    from noisesearch_builtin.models.digits import DigitsModel

    out = tmp_path / "run"
    crash_digits_verifier_at(monkeypatch, 3)
    with pytest.raises(noisesearch.NoiseSearchError, match="disk on fire"):
        noisesearch.search(model="digits", label=6, candidates=16, batch_size=4, seed=1, steps=4,
                           output=str(out))
    monkeypatch.undo()

    class FakeOutOfMemory(RuntimeError):
        is_out_of_memory = True

    decode, decodes = DigitsModel.decode, {"n": 0}

    def small_device(self, x):  # noqa: ANN001, ANN202
        decodes["n"] += 1
        if decodes["n"] > 50:
            raise AssertionError("the resumed chunk was retried without end")
        if x.shape[0] > 2:
            raise FakeOutOfMemory("CUDA out of memory")
        return decode(self, x)

    monkeypatch.setattr(DigitsModel, "decode", small_device)
    with pytest.raises(noisesearch.NoiseSearchError, match="resuming: a journaled batch of 4 rows ran out"):
        resume_run(out)
    assert decodes["n"] == 1
