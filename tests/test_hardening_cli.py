"""Bad input a new user types gets one clear line and exit code 2 (1 for a failure after work
began, 130 for Ctrl-C), never a traceback, and nothing is written for input that was refused."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke, refused
from processes import with_default_ctrl_c

from noisesearch.plugins import LOAD_PLUGINS_ENV

DIGITS = ["--model", "digits"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    result = invoke("run", *DIGITS, "--candidates", "2", "--label", "3", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    return out


def damaged(finished: Path, tmp_path: Path, edit=None, **files: bytes | None) -> Path:  # noqa: ANN001
    """A copy of a finished run with ``run.json`` edited and files replaced (None: removed)."""
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    if edit is not None:
        data = json.loads((copy / "run.json").read_text())
        edit(data)
        (copy / "run.json").write_text(json.dumps(data))
    for name, content in files.items():
        path = copy / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
    return copy


# -- labels, files, encodings -----------------------------------------------------------------


@pytest.mark.parametrize("label", ["³", "٣", "½"])
def test_non_ascii_digit_label_is_a_clear_error(label: str, tmp_path: Path) -> None:
    refused(invoke("run", *DIGITS, "--label", label, "-o", str(tmp_path / "r")), 2, "label")
    assert not (tmp_path / "r").exists()


def test_non_utf8_config_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes("prompt = 'caf\xe9'\n".encode("latin-1"))
    refused(invoke("run", *DIGITS, "-c", str(config), "-o", str(tmp_path / "r")), 2, "not UTF-8")


def test_run_json_whose_config_is_not_a_table_as_a_config_file(finished: Path, tmp_path: Path) -> None:
    copy = damaged(finished, tmp_path, lambda d: d.__setitem__("config", "oops"))
    refused(invoke("run", "-c", str(copy / "run.json"), "-o", str(tmp_path / "r")), 2, "config")


@pytest.mark.parametrize("command", ["show", "report", "replay", "resume"])
@pytest.mark.parametrize("damage", ["non-utf8", "config-string", "config-list"])
def test_damaged_run_json_is_a_clear_error(
    finished: Path, tmp_path: Path, command: str, damage: str
) -> None:
    if damage == "non-utf8":
        copy = damaged(finished, tmp_path, **{"run.json": b'\xff\xfe{"schema_version": 1}'})
    else:
        value = "oops" if damage == "config-string" else [1, 2]
        copy = damaged(finished, tmp_path, lambda d: (d.__setitem__("config", value),
                                                      d.__setitem__("complete", False)),
                       **{"journal__keep": b""})
    args = ["run", "--resume", str(copy)] if command == "resume" else [command, str(copy)]
    refused(invoke(*args), 2, str(copy / "run.json"))


def test_runs_lists_a_damaged_run_beside_the_others(finished: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(finished, root / "good")
    for name, data in (("string", "oops"), ("list", [1])):
        bad = damaged(finished, tmp_path / name, lambda d, v=data: d.__setitem__("config", v))
        shutil.move(bad, root / name)
    (root / "nonutf8").mkdir()
    (root / "nonutf8" / "run.json").write_bytes(b"\xff\xfe")
    result = invoke("runs", str(root), "--json")
    refused(result, 0)
    rows = {row["run"]: row for row in json.loads(result.output)}
    assert set(rows) == {"good", "string", "list", "nonutf8"}
    assert "error" not in rows["good"] and rows["good"]["model"] == "digits"
    assert all("error" in rows[name] for name in ("string", "list", "nonutf8"))
    refused(invoke("runs", str(root)), 0, "good")


# -- replay -------------------------------------------------------------------------------------


def test_replay_without_best_is_a_clear_error(finished: Path, tmp_path: Path) -> None:
    copy = damaged(finished, tmp_path, lambda d: d.pop("best"))
    refused(invoke("replay", str(copy)), 2, "best")


@pytest.mark.parametrize("content", ["truncated", "pickle"])
def test_replay_with_damaged_best_noise_is_a_clear_error(
    finished: Path, tmp_path: Path, content: str
) -> None:
    data = (finished / "best_noise.safetensors").read_bytes()[:40] if content == "truncated" else (
        pickle.dumps({"noise": [1.0, 2.0]})
    )
    copy = damaged(finished, tmp_path, **{"best_noise.safetensors": data})
    refused(invoke("replay", str(copy)), 2, "best_noise.safetensors", "not a readable safetensors")


def test_replay_refuses_a_newer_schema_like_show(finished: Path, tmp_path: Path) -> None:
    copy = damaged(finished, tmp_path, lambda d: d.__setitem__("schema_version", 99))
    refused(invoke("show", str(copy)), 2, "schema version 99")
    refused(invoke("replay", str(copy)), 2, "schema version 99")
    assert not (copy / "replay.png").exists()


# -- resume -------------------------------------------------------------------------------------


def _interrupted_copy(finished: Path, tmp_path: Path, entry: bytes) -> Path:
    def incomplete(data: dict) -> None:
        data["complete"] = False
        data["status"] = "interrupted"

    return damaged(finished, tmp_path, incomplete, **{"journal__000000-solve.safetensors": entry})


@pytest.mark.parametrize("entry", [b"garbage", pickle.dumps({"x": 1}), b""])
def test_resume_with_a_damaged_journal_entry_is_a_clear_error(
    finished: Path, tmp_path: Path, entry: bytes
) -> None:
    copy = _interrupted_copy(finished, tmp_path, entry)
    refused(invoke("run", "--resume", str(copy)), 2, "000000-solve.safetensors", "damaged")


# -- model options, devices, output ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "text", "pickle", "folder"])
def test_weights_option_that_is_not_a_safetensors_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "weights.safetensors"
    if kind == "text":
        path.write_text("not weights")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"weight": [1.0]}))
    elif kind == "folder":
        path.mkdir()
    result = invoke("run", *DIGITS, "--model-opt", f"weights={path}", "-o", str(tmp_path / "r"))
    refused(result, 2, "weights", str(path))
    assert not (tmp_path / "r").exists()  # checked while planning, before any folder


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "meta"])
def test_device_that_does_not_exist_is_refused_before_anything_is_written(
    tmp_path: Path, device: str
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    result = invoke("run", *DIGITS, "--device", device, "-o", str(tmp_path / "r"))
    refused(result, 2, "device")
    assert not (tmp_path / "r").exists()


def test_device_in_model_options_is_checked_too(tmp_path: Path) -> None:
    refused(invoke("run", *DIGITS, "--model-opt", "device=meta", "-o", str(tmp_path / "r")), 2, "device")


@pytest.mark.parametrize("root", ["/proc/noisesearch-test/run", "FILE/run"])
def test_output_that_cannot_be_created_is_a_clear_error(tmp_path: Path, root: str) -> None:
    (tmp_path / "FILE").write_text("a file on the way")
    output = root.replace("FILE", str(tmp_path / "FILE"))
    refused(invoke("run", *DIGITS, "--candidates", "2", "-o", output), 2, "output")


def test_empty_output_is_refused_not_replaced_by_the_default(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    refused(invoke("run", *DIGITS, "--candidates", "2", "-o", ""), 2, "output")
    assert list(tmp_path.iterdir()) == []


# -- sizes, non-finite numbers, budgets -----------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [
    ("--candidates", "99999999999999999999"), ("--steps", "100000000"),
    ("--budget-nfe", "99999999999999999999"), ("--top-k", "99999999999"),
    ("--batch-size", "99999999999"), ("--seed", str(2**64)),
])
def test_absurd_sizes_are_refused_at_once(tmp_path: Path, option: str, value: str) -> None:
    started = time.perf_counter()
    result = invoke("run", *DIGITS, option, value, "-o", str(tmp_path / "r"))
    refused(result, 2, option.removeprefix("--").replace("-", "_"))
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "r").exists()


def test_a_search_costing_more_than_the_limit_says_its_cost(tmp_path: Path) -> None:
    result = invoke("run", *DIGITS, "--candidates", "1000000", "--steps", "5000", "-o", str(tmp_path / "r"))
    refused(result, 2, "5,000,000,000 denoiser evaluations")


@pytest.mark.parametrize("args", [
    ["--set", "model_options.guidance_scale=NaN"], ["--set", "model_options.guidance_scale=Infinity"],
    ["--model-opt", "guidance_scale=-Infinity"],
    ["--strategy", "zero-order", "--strategy-opt", "step_size=NaN"],
])
def test_non_finite_option_values_are_refused(tmp_path: Path, args: list[str]) -> None:
    refused(invoke("run", *DIGITS, *args, "--candidates", "2", "-o", str(tmp_path / "r")), 2, "finite")
    assert not (tmp_path / "r").exists()


def test_non_finite_value_in_a_toml_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "nan.toml"
    config.write_text("model = 'digits'\n[model_options]\nguidance_scale = nan\n")
    refused(invoke("run", "-c", str(config), "-o", str(tmp_path / "r")), 2, "finite")


@pytest.mark.parametrize(("args", "least"), [
    (["--budget-nfe", "5"], "20"), (["--budget-nfe", "30", "--solver", "heun"], "39"),
])
def test_budget_too_small_for_one_candidate_leaves_no_folder(
    tmp_path: Path, args: list[str], least: str
) -> None:
    refused(invoke("run", *DIGITS, *args, "-o", str(tmp_path / "r")), 2, "budget_nfe", least)
    assert not (tmp_path / "r").exists()


# -- Ctrl-C ---------------------------------------------------------------------------------------


def _console(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, LOAD_PLUGINS_ENV: ""}
    return subprocess.Popen(
        [sys.executable, "-c", "from noisesearch.console import main; main()", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=with_default_ctrl_c,
    )


@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_ctrl_c_while_loading_prints_no_traceback_and_no_resume_hint(tmp_path: Path, delay: float) -> None:
    process = _console("run", *DIGITS, "--candidates", "100000", "-o", str(tmp_path / "r"))
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    if not (tmp_path / "r").exists():
        assert "--resume" not in err and "RUN_FOLDER" not in err


def test_ctrl_c_inside_torchs_import_is_held_until_the_import_is_done(tmp_path: Path) -> None:
    """torch's import runs Python from C++, where a KeyboardInterrupt cannot unwind (the process
    was ended by ``terminate``: no exit code 130, seen when Ctrl-C came 0.8 s into a run). A stand-in
    ``torch`` whose import gets a Ctrl-C halfway: the import finishes, then the KeyboardInterrupt
    comes."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import builtins, signal\nsignal.raise_signal(signal.SIGINT)\nbuiltins.imported_whole = True\n")
    script = textwrap.dedent(f"""
        import builtins, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from noisesearch import interrupts
        interrupts.install()
        try:
            interrupts.import_torch()
        except KeyboardInterrupt:
            print("interrupted after the import:", getattr(builtins, "imported_whole", False))
        print("requested:", interrupts.requested())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=with_default_ctrl_c)
    assert done.stdout.splitlines() == ["interrupted after the import: True", "requested: True"], done.stderr


@pytest.mark.slow
def test_ctrl_c_during_a_run_names_the_real_folder(tmp_path: Path) -> None:
    out = tmp_path / "my run"
    process = _console("run", *DIGITS, "--candidates", "200000", "-o", str(out), "-q")
    deadline = time.monotonic() + 120
    while not (out / "candidates.jsonl").exists() or not (out / "candidates.jsonl").stat().st_size:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "RUN_FOLDER" not in err
    assert f"--resume '{out}'" in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


@pytest.fixture
def recorded_ctrl_c() -> Iterator[None]:
    """The console script's Ctrl-C handler, installed in this process for one test."""
    from noisesearch import interrupts

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts.reset()
    interrupts.install()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupts.reset()


SWALLOWING_STRATEGY = """
    import os, signal
    from noisesearch import hookimpl
    from noisesearch.recipes import seed_recipe

    class Swallow:
        '''Random search whose first batch meets a library that swallows Ctrl-C.'''

        def run(self, context):
            first = True
            while context.affordable():
                if first:
                    try:
                        os.kill(os.getpid(), signal.SIGINT)
                        for _ in range(10**6):  # the signal is raised here
                            pass
                    except KeyboardInterrupt:
                        pass  # the library's broad except
                    first = False
                context.evaluate([seed_recipe(s) for s in context.seeds(1)])

    @hookimpl
    def register_search_strategies(register):
        register("swallow", Swallow)
"""


def test_a_swallowed_ctrl_c_still_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded_ctrl_c: None
) -> None:
    monkeypatch.delenv(LOAD_PLUGINS_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "noisesearch_swallow.py").write_text(textwrap.dedent(SWALLOWING_STRATEGY))
    info = tmp_path / "noisesearch_swallow-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: noisesearch_swallow\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[noisesearch]\nswallow = noisesearch_swallow\n")
    importlib.invalidate_caches()
    out = tmp_path / "r"
    try:
        result = invoke("run", *DIGITS, "--strategy", "swallow", "--candidates", "50", "-o", str(out))
    finally:
        sys.modules.pop("noisesearch_swallow", None)
    refused(result, 130, f"continue with `noisesearch run --resume {out}`")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and "error" not in run
    assert len((out / "candidates.jsonl").read_text().splitlines()) < 50


@pytest.mark.parametrize(
    "extra", [["--seed", "3"], ["--candidates", "8"], ["--model-opt", "guidance_scale=2"]]
)
def test_resume_refuses_options_that_would_change_the_run(tmp_path: Path, extra: list[str]) -> None:
    """A resume re-runs the folder's own configuration; a new option was silently ignored."""
    result = invoke("run", "--resume", str(tmp_path / "run"), *extra)
    assert result.exit_code == 2, result.output
    assert extra[0] in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_dry_run_checks_the_output_folder_as_the_run_would(finished: Path) -> None:
    """``--dry-run`` promises to check the output folder: one that holds a run is refused
    (exit 2) unless ``--overwrite``, as the run itself would refuse it."""
    refused(invoke("run", *DIGITS, "--label", "3", "-o", str(finished), "--dry-run"), 2,
            "holds a finished run", "--overwrite")
    allowed = invoke("run", *DIGITS, "--label", "3", "-o", str(finished), "--dry-run", "--overwrite")
    assert allowed.exit_code == 0, allowed.output
