"""Run-folder integrity (issue 10, item 4): one writer per folder (a lock naming its process),
no silent writing over a finished run (``--overwrite`` clears its files), and ``--resume``
refuses a run whose setup changed since it stopped, naming the changed field."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from crashes import crash_digits_verifier_at
from processes import with_default_ctrl_c
from typer.testing import CliRunner

import noisesearch
from noisesearch.api import resume_run
from noisesearch.cli import build_app
from noisesearch.locking import LOCK_FILE, FolderInUse, acquire, release


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen]:
    """A live process that is not this one, to hold a lock."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def write_lock(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host or socket.gethostname(), "command": "noisesearch run -o x",
              "started": "2026-01-01T00:00:00"}
    (folder / LOCK_FILE).write_text(json.dumps(record))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def crash_on_third_verifier_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the run stop half-way, as a crash would (the searched verifier fails on its third
    batch; the judge, which scores only the running bests, is called on fewer)."""
    crash_digits_verifier_at(monkeypatch, 3, "power cut")


# -- the lock ----------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path, other_process) -> None:
    out = tmp_path / "run"
    write_lock(out, other_process.pid)
    code, output = run("run", "--model", "digits", "--label", "1", "--candidates", "2", "-o", str(out))
    assert code == 2 and f"in use by process {other_process.pid} on {socket.gethostname()}" in output
    assert "noisesearch run -o x" in output and "Traceback" not in output
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written


def test_report_and_resume_are_refused_while_a_run_holds_the_folder(
    tmp_path: Path, other_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    crash_on_third_verifier_call(monkeypatch)
    with pytest.raises(noisesearch.NoiseSearchError, match="power cut"):
        noisesearch.search(model="digits", label=1, candidates=16, batch_size=4, output=str(out))
    monkeypatch.undo()
    assert run("report", str(out))[0] == 0
    page = (out / "report.html").read_bytes()
    write_lock(out, other_process.pid)
    code, output = run("report", str(out))
    assert code == 2 and f"process {other_process.pid}" in output
    assert (out / "report.html").read_bytes() == page
    with pytest.raises(FolderInUse, match=f"process {other_process.pid}"):
        resume_run(out)


def test_a_lock_whose_process_is_dead_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_lock(out, dead_pid())
    result = noisesearch.search(model="digits", label=3, candidates=2, output=str(out))
    assert result.run_dir == out and json.loads((out / "run.json").read_text())["complete"]
    assert not (out / LOCK_FILE).exists()  # released when the run ended


def test_a_lock_from_another_host_is_never_guessed_stale(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_lock(out, 1, host="elsewhere.example")
    with pytest.raises(FolderInUse, match=r"process 1 on elsewhere\.example.*delete .*\.lock"):
        acquire(out)


def test_the_lock_is_exclusive_and_released_by_its_holder(tmp_path: Path) -> None:
    acquire(tmp_path)
    held = json.loads((tmp_path / LOCK_FILE).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(FolderInUse):  # O_EXCL: even this process cannot take it twice
        acquire(tmp_path)
    release(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()


# -- finished folders ----------------------------------------------------------------------------


def test_a_finished_run_is_not_overwritten_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "--model", "digits", "--label", "4", "--candidates", "8", "-o", str(out), "-q"]
    assert run(*args, "--top-k", "8")[0] == 0
    before = (out / "run.json").read_text()
    code, output = run(*args, "--top-k", "3", "--seed", "1")
    assert code == 2 and "holds a finished run; pass --overwrite" in " ".join(output.split())
    assert (out / "run.json").read_text() == before

    assert run(*args, "--top-k", "3", "--seed", "1", "--overwrite")[0] == 0
    assert sorted(p.name for p in (out / "top").iterdir()) == ["01.png", "02.png", "03.png"]
    saved = json.loads((out / "run.json").read_text())
    assert saved["config"]["seed"] == 1 and len(saved["top"]) == 3


def test_a_new_run_into_an_interrupted_one_points_to_resume(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    crash_on_third_verifier_call(monkeypatch)
    with pytest.raises(noisesearch.NoiseSearchError, match="power cut"):
        noisesearch.search(model="digits", label=1, candidates=16, batch_size=4, output=str(out))
    with pytest.raises(noisesearch.ConfigError, match=r"did not finish \(failed\).*--resume"):
        noisesearch.search(model="digits", label=1, candidates=16, batch_size=4, output=str(out))


# -- the fingerprint ------------------------------------------------------------------------------


def test_resume_refuses_a_changed_seed_naming_the_field(tmp_path: Path, monkeypatch) -> None:
    """The issue's case: the seed edited in run.json, then --resume mixed two runs (exit 0)."""
    out = tmp_path / "run"
    crash_on_third_verifier_call(monkeypatch)
    with pytest.raises(noisesearch.NoiseSearchError, match="power cut"):
        noisesearch.search(model="digits", label=1, candidates=16, batch_size=4, output=str(out))
    monkeypatch.undo()
    saved = json.loads((out / "run.json").read_text())
    saved["config"]["seed"] = 5
    (out / "run.json").write_text(json.dumps(saved))
    code, output = run("run", "--resume", str(out))
    assert code == 2 and "config.seed (was 0, now 5)" in " ".join(output.split())
    assert len((out / "candidates.jsonl").read_text().splitlines()) == 8  # untouched


def test_resume_refuses_changed_weights_without_reading_them(tmp_path: Path, monkeypatch) -> None:
    """Local weights are fingerprinted by size, mtime and safetensors header: touching the
    file is enough to refuse, and resuming the untouched run works."""
    import shutil

    from noisesearch_builtin.digits import FLOW_WEIGHTS

    weights = tmp_path / "flow.safetensors"
    shutil.copy(FLOW_WEIGHTS, weights)
    out = tmp_path / "run"
    crash_on_third_verifier_call(monkeypatch)
    with pytest.raises(noisesearch.NoiseSearchError, match="power cut"):
        noisesearch.search(model="digits", label=1, candidates=16, batch_size=4, output=str(out),
                           model_options={"weights": str(weights)})
    monkeypatch.undo()
    recorded = json.loads((out / "journal" / "fingerprint.json").read_text())
    entry = recorded["model"]["weights"][str(weights)]
    assert entry["size"] == weights.stat().st_size and len(entry["header_sha256"]) == 64
    assert recorded["model"]["distribution"] == "noisesearch" and recorded["model"]["version"]

    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(noisesearch.ConfigError, match=r"model\.weights\..*mtime_ns"):
        resume_run(out)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    resumed = resume_run(out)
    assert resumed.usage.candidates == 16


def test_a_damaged_fingerprint_is_refused_not_ignored(tmp_path: Path) -> None:
    from noisesearch.journal import FINGERPRINT, Journal, JournalMismatch

    journal = Journal(tmp_path / "journal")
    for damaged in ("{", "[1, 2]"):
        (tmp_path / "journal" / FINGERPRINT).write_text(damaged)
        with pytest.raises(JournalMismatch, match="is damaged"):
            Journal(tmp_path / "journal", resume=True).recorded_fingerprint()
    journal.record_fingerprint({"config": {"seed": 0}})
    assert Journal(tmp_path / "journal", resume=True).recorded_fingerprint() == {"config": {"seed": 0}}


@pytest.mark.slow
def test_two_real_processes_cannot_write_one_folder(tmp_path: Path) -> None:
    """The issue's case: a second run into a folder in use corrupted it silently, and resuming
    it then said "complete". Now the second is refused naming the first, which goes on."""
    import signal
    import time

    cli = str(Path(sys.executable).with_name("noisesearch"))
    out = tmp_path / "run"
    args = ["run", "--model", "digits", "--label", "3", "-q", "--batch-size", "4", "-o", str(out)]
    first = subprocess.Popen([cli, *args, "--candidates", "2000"], stderr=subprocess.PIPE, text=True,
                             preexec_fn=with_default_ctrl_c)
    try:
        deadline = time.monotonic() + 120
        while not (out / "candidates.jsonl").exists() or not (out / "candidates.jsonl").read_text():
            assert first.poll() is None and time.monotonic() < deadline, "the first run never got going"
            time.sleep(0.05)
        second = subprocess.run([cli, *args, "--candidates", "4", "--overwrite"], capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr
        resumed = subprocess.run([cli, "run", "--resume", str(out), "-q"], capture_output=True,
                                 text=True, timeout=120)
        assert resumed.returncode == 2 and f"process {first.pid}" in resumed.stderr
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
        assert first.returncode == 130, stderr
    finally:
        if first.poll() is None:
            first.kill()
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(len(rows)))  # one writer, in order
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (out / LOCK_FILE).exists()
