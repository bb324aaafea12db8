"""`noisesearch bench` on folders it must not write, and on values it must not drop: one bench
per folder (a lock), no run folder removed under its holder, a 0 on the command line refused,
no bench written over a run or a foreign folder, no earlier rows dropped by another grid, and
"~" expanded. Each test runs a tiny digits bench (two cells) or none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import noisesearch
from noisesearch import locking
from noisesearch.bench.cells import CellRunner
from noisesearch.bench.grid import BenchGrid, grid_from_mapping, load_grid_file
from noisesearch.bench.runner import expand, run_bench
from noisesearch.cli import build_app
from noisesearch.errors import ConfigError
from noisesearch.plugins import build_registries

#: Two cells: the default-steps baseline and one random search of 40 NFEs, for one label.
TINY = ["--model", "digits", "--strategy", "random", "--budget", "40", "--limit", "1",
        "--baseline", "default", "--threads", "1", "-q"]


def tiny(output: Path | str, **changes) -> dict:
    fields = {"models": ["digits"], "strategies": ["random"], "budgets": [40], "limit": 1,
              "baselines": ["default"], "threads": 1, "output": str(output)}
    return {**fields, **changes}


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what a refused bench must leave alone."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hold_in_child(folder: Path) -> subprocess.Popen:
    """Another live process holding ``folder``'s lock, as a running bench would."""
    code = ("import sys, time; from pathlib import Path; from noisesearch.locking import acquire; "
            "acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(300)")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def stop(child: subprocess.Popen) -> None:
    child.kill()
    child.wait(timeout=30)  # reaped: its pid is gone, so its lock is stale


# -- H1: one bench per bench folder; no run folder removed under its holder -----------------------

def test_a_bench_folder_held_by_a_live_process_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    assert invoke("bench", *TINY, "-o", str(folder)).exit_code == 0
    assert not (folder / locking.LOCK_FILE).exists()  # released at the end
    child = hold_in_child(folder)
    try:
        before = snapshot(folder)
        result = invoke("bench", *TINY, "-o", str(folder))
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert f"bench folder {str(folder)!r} is in use by process {child.pid}" in result.output
        assert "choose another --output" in result.output
        assert snapshot(folder) == before  # nothing written, nothing removed
    finally:
        stop(child)
    # Its holder dead, the lock is stale: the same bench continues (nothing left to run).
    again = run_bench(grid_from_mapping(tiny(folder)))
    assert again.ran == 0 and len(again.rows) == 2
    assert not (folder / locking.LOCK_FILE).exists()


def test_a_new_bench_folder_held_by_another_process_gets_nothing_written(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    folder.mkdir()
    child = hold_in_child(folder)
    try:
        result = invoke("bench", *TINY, "-o", str(folder))
        assert result.exit_code == 2 and "is in use by process" in result.output, result.output
        assert [p.name for p in folder.iterdir()] == [locking.LOCK_FILE]
    finally:
        stop(child)


def test_a_cell_never_removes_a_run_folder_that_a_live_process_holds(tmp_path: Path) -> None:
    cell = expand(grid_from_mapping(tiny(tmp_path / "bench")), build_registries())[1]
    run_dir = Path(cell.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "theirs.txt").write_text("written by the holder")
    child = hold_in_child(run_dir)
    runner = CellRunner(threads=1)
    try:
        row = runner.run(cell)
        assert row["status"] == "failed" and row["error"].startswith("FolderInUse"), row
        assert (run_dir / "theirs.txt").read_text() == "written by the holder"
        assert locking.read_lock(run_dir)["pid"] == child.pid
    finally:
        stop(child)
    # The holder gone, the leftover of that try is emptied and the cell runs from scratch.
    row = runner.run(cell)
    assert row["status"] == "ok", row.get("error")
    assert not (run_dir / "theirs.txt").exists() and (run_dir / "run.json").is_file()
    assert not (run_dir / locking.LOCK_FILE).exists()


# -- M4: a 0 given on the command line reaches validation --------------------------------------------

@pytest.mark.parametrize(("option", "field"), [
    ("--limit", "limit"), ("--per-category", "per_category"), ("--steps", "steps"),
    ("--batch-size", "batch_size"), ("--threads", "threads"),
])
def test_a_zero_on_the_command_line_is_refused_as_in_a_grid_file(option: str, field: str,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "bench"
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(f'models = ["digits"]\nbudgets = [40]\n{field} = 2\n')
    for args in (["--model", "digits", "--budget", "40"], [str(grid_file)]):  # 0 overrides the file's 2
        result = invoke("bench", *args, option, "0", "-o", str(out))
        assert result.exit_code == 2, result.output
        assert f"Error: {field}: must be a positive integer, got 0" in result.output
        assert not out.exists()


# -- M5: a run folder, or any folder but an empty one or a bench's, is refused ---------------------

def test_a_run_folder_or_a_foreign_folder_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    noisesearch.search(model="digits", label=3, candidates=2, output=str(run_dir))
    before = snapshot(run_dir)
    result = invoke("bench", *TINY, "-o", str(run_dir))
    assert result.exit_code == 2, result.output
    assert "holds a `noisesearch run` (run.json)" in result.output and "Traceback" not in result.output
    assert snapshot(run_dir) == before  # its report.html is its own still

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    result = invoke("bench", *TINY, "-o", str(foreign))
    assert result.exit_code == 2, result.output
    assert "is not empty and holds no bench.json (it holds todo.txt)" in result.output
    assert [p.name for p in foreign.iterdir()] == ["todo.txt"]


# -- L7: another grid in a bench folder ------------------------------------------------------------

def test_a_grid_that_drops_cells_is_refused_a_larger_one_continues_and_overwrite_replaces(
        tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    first = run_bench(grid_from_mapping(tiny(folder)))
    assert first.ran == 2 and not first.failed
    before = snapshot(folder)

    result = invoke("bench", *TINY, "--steps", "10", "-o", str(folder))
    assert result.exit_code == 2, result.output
    assert "holds a bench of another grid (steps: null -> 10)" in result.output
    assert "2 of its cells (2 finished)" in result.output and "--overwrite" in result.output
    assert snapshot(folder) == before

    # More budgets keep every earlier cell: the bench continues, its rows kept.
    larger = run_bench(grid_from_mapping(tiny(folder, budgets=[40, 80])))
    assert larger.ran == 1 and len(larger.rows) == 3
    assert {row["key"] for row in first.rows} < {row["key"] for row in larger.rows}
    assert run_bench(grid_from_mapping(tiny(folder, budgets=[40, 80]))).ran == 0  # same grid: resumes

    # --overwrite replaces that bench: only the new grid's rows, every cell run again.
    replaced = invoke("bench", *TINY, "--steps", "10", "--overwrite", "-o", str(folder))
    assert replaced.exit_code == 0, replaced.output
    rows = (folder / "results.jsonl").read_text().splitlines()
    assert len(rows) == 2 and all('"steps": 10' in row for row in rows)
    with pytest.raises(ConfigError, match="overwrite"):
        noisesearch.bench(**tiny(folder), overwrite="no")


# -- M8: "~" in a bench's paths ------------------------------------------------------------------------

def test_a_tilde_output_and_grid_file_go_to_the_home_folder(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("MPLCONFIGDIR", matplotlib.get_configdir())  # its font cache, not a new one
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    (home / "grid.toml").write_text('models = ["digits"]\noutput = "~/from-file"\n')
    assert load_grid_file("~/grid.toml")["output"] == "~/from-file"

    result = noisesearch.bench(**tiny("~/benches/b"))
    assert result.folder == home / "benches" / "b" and not result.failed
    assert (home / "benches" / "b" / "bench.json").is_file()
    assert all(row["run_dir"].startswith(str(home / "benches" / "b")) for row in result.rows)
    assert list(cwd.iterdir()) == []  # no literal "~" folder here
    with pytest.raises(ConfigError, match="output"):
        grid_from_mapping(tiny(""))
    assert BenchGrid(output=home / "p").output == str(home / "p")  # bench(output=Path(...))


# -- probe7 D6: a bool is no integer ---------------------------------------------------------------

@pytest.mark.parametrize("field", ["per_category", "limit", "steps", "batch_size", "threads", "top_k"])
def test_true_for_an_integer_field_is_refused_before_any_folder(field: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(f'budgets = [40]\n{field} = true\noutput = "{out}"\n')
    result = invoke("bench", str(grid_file), "-q")
    assert result.exit_code == 2, result.output
    assert f"Error: {field}: must be a positive integer, got true" in result.output
    assert "Traceback" not in result.output and not out.exists()
    for grid in ({"budgets": [True]}, {"seeds": [True]}, {"resources": {"digits": {"num_gpus": True}}}):
        with pytest.raises(ConfigError, match=next(iter(grid))):
            grid_from_mapping(tiny(out, **grid))


# -- probe7 D9: grid input taken silently ----------------------------------------------------------

def test_empty_evaluators_and_options_for_names_not_in_the_grid_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    with pytest.raises(ConfigError, match=r"^evaluators: name at least one held-out evaluator"):
        grid_from_mapping(tiny(out, evaluators=[]))
    with pytest.raises(ConfigError, match=r"^model_options: 'shapes' is not one of the grid's models"):
        grid_from_mapping(tiny(out, model_options={"shapes": {"device": "cpu"}}))
    grid = grid_from_mapping(tiny(out, verifier_options={"nosuch": {"x": 1}}))
    with pytest.raises(ConfigError, match=r"^verifier_options: options for \['nosuch'\], which the grid"):
        expand(grid, build_registries())
    # Options for the model's default verifier or evaluator (not named in the grid) are used.
    used = tiny(out, verifier_options={"digits-evaluator": {}})
    assert len(expand(grid_from_mapping(used), build_registries())) == 2
    assert not out.exists()


@pytest.mark.parametrize(("option", "field", "value"), [
    ("--budget", "budgets", "80"), ("--seed", "seeds", "1"), ("--model", "models", '"digits"'),
])
def test_a_value_given_twice_is_named(option: str, field: str, value: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    twice = value.strip('"')
    result = invoke("bench", "--budget", "40", "--limit", "1", option, twice, option, twice, "-o", str(out))
    assert result.exit_code == 2, result.output
    assert f"Error: {field}: {value} is given twice" in result.output
    assert not out.exists()


def test_a_condition_given_twice_in_the_suite_is_named(tmp_path: Path) -> None:
    suite = tmp_path / "suite.txt"
    suite.write_text("label:1\nlabel:2\nlabel:1\n")
    grid = grid_from_mapping(tiny(tmp_path / "bench", prompts=str(suite), limit=None))
    with pytest.raises(ConfigError, match=r"same search: baseline:default on 'digits', seed 0, label 1 "
                                          r"\(is a condition repeated in the suite"):
        expand(grid, build_registries())


# -- probe7 D5: an ensemble evaluator is not held out ----------------------------------------------

def test_an_ensemble_evaluator_holding_the_searched_verifier_or_any_ensemble_is_refused(
        tmp_path: Path) -> None:
    registries = build_registries()
    holding = tiny(tmp_path / "bench", verifiers=["digits-classifier"], evaluators=["ensemble"],
                   verifier_options={"ensemble": {"members": ["digits-classifier", "example-contrast"]}})
    with pytest.raises(ConfigError, match=r"^evaluators: \['digits-classifier'\] is also searched on "
                                          r"\(verifiers\) \(a member of 'ensemble'\)"):
        expand(grid_from_mapping(holding), registries)
    # Held out, but ranks within a pool: a winner judged alone scores 1.0. Second evaluator too.
    pooled = tiny(tmp_path / "bench", verifiers=["digits-classifier"],
                  evaluators=["digits-evaluator", "ensemble"],
                  verifier_options={"ensemble": {"members": ["digits-evaluator", "example-contrast"]}})
    with pytest.raises(ConfigError, match=r"^evaluators: 'ensemble' scores an image by its rank .* "
                                          r"always scores 1\.0"):
        expand(grid_from_mapping(pooled), registries)
    assert not (tmp_path / "bench").exists()


# -- probe7 D8: executor options the local executor would ignore ----------------------------------

@pytest.mark.parametrize(("option", "value"), [("--workers", "7"), ("--address", "10.9.9.9:6379")])
def test_ray_options_with_the_local_executor_are_refused(option: str, value: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = invoke("bench", *TINY, option, value, "-o", str(out))
    assert result.exit_code == 2, result.output
    assert f"Error: {option[2:]}: only with --executor ray" in result.output
    assert not out.exists()
    with pytest.raises(ConfigError, match="^workers: only with --executor ray"):
        noisesearch.bench(**tiny(out), executor_options={"workers": 2})
    assert not out.exists()


# -- probe7 D10: --cell-reports is not another bench -----------------------------------------------

def test_cell_reports_keeps_the_default_bench_folder() -> None:
    from noisesearch.bench.runner import default_folder

    plain = grid_from_mapping({"budgets": [40], "limit": 1})
    drawn = grid_from_mapping({"budgets": [40], "limit": 1, "cell_reports": True})
    assert default_folder(drawn) == default_folder(plain)
    assert default_folder(plain) != default_folder(grid_from_mapping({"budgets": [80], "limit": 1}))


# -- probe7 D3: no empty lock left by an interrupt; an old empty one is stale -----------------------

def test_an_interrupt_while_taking_a_lock_leaves_no_lock(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", interrupted)  # Ctrl-C while the record is written
    with pytest.raises(KeyboardInterrupt):
        locking.acquire(tmp_path)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # no lock, no temporary file
    locking.acquire(tmp_path)  # so nothing stops the next holder
    assert locking.read_lock(tmp_path)["pid"] == locking.os.getpid()
    locking.release(tmp_path)


def test_an_empty_lock_is_refused_naming_it_then_taken_over_once_old(tmp_path: Path) -> None:
    import os
    import time

    lock = tmp_path / locking.LOCK_FILE
    lock.write_text("")  # left by an earlier version interrupted between create and write
    with pytest.raises(locking.FolderInUse, match=rf"empty or damaged.*delete {lock}"):
        locking.acquire(tmp_path)
    old = time.time() - locking.EMPTY_GRACE_S - 5
    os.utime(lock, (old, old))
    assert not locking.held_by_others(tmp_path)
    locking.check_unlocked(tmp_path)
    locking.acquire(tmp_path)
    assert locking.read_lock(tmp_path)["pid"] == os.getpid()
    locking.release(tmp_path)
    assert not lock.exists()


def test_a_lock_that_cannot_be_read_is_held_however_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O or permission error reading a live run's lock is not an empty lock: never taken over."""
    import os
    import time

    lock = tmp_path / locking.LOCK_FILE
    lock.write_text('{"pid": 1}')
    old = time.time() - locking.EMPTY_GRACE_S - 5
    os.utime(lock, (old, old))
    real = Path.read_text

    def unreadable(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == locking.LOCK_FILE:
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(locking.FolderInUse, match="cannot be read here .*Permission denied"):
        locking.acquire(tmp_path)
    assert lock.exists()


def test_a_cell_whose_run_folder_holds_an_old_empty_lock_runs(tmp_path: Path) -> None:
    import os
    import time

    cell = expand(grid_from_mapping(tiny(tmp_path / "bench")), build_registries())[1]
    run_dir = Path(cell.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / locking.LOCK_FILE).write_text("")
    old = time.time() - locking.EMPTY_GRACE_S - 5
    os.utime(run_dir / locking.LOCK_FILE, (old, old))
    row = CellRunner(threads=1).run(cell)
    assert row["status"] == "ok", row.get("error")
    assert not (run_dir / locking.LOCK_FILE).exists()
