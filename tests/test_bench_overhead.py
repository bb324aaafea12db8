"""What a bench cell costs beyond its search (issue 11 item 7): the work cut from every small
cell is gone, and what is written is the same as before."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from noisesearch import config, journal, planning, results
from noisesearch.bench import store
from noisesearch.bench.grid import BenchGrid, StrategySpec
from noisesearch.bench.runner import run_bench
from noisesearch.types import Candidate


def test_a_run_folder_encodes_each_image_once_and_writes_the_same_bytes(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 28, 28, generator=generator) for _ in range(3)]  # (C, H, W) in [0, 1]
    top = [Candidate(index=i, recipe={"kind": "seed", "seed": i}, scores={"judge": 0.5}, objective=float(i),
                     nfe=10, image=image) for i, image in enumerate(images)]
    pictures = results.Pictures()
    results.save_png(images[0], tmp_path / "cached.png", pictures)
    results.save_png(images[0], tmp_path / "again.png", pictures)
    results.save_png(images[0], tmp_path / "fresh.png")
    assert pictures.picture(images[0]) is pictures.picture(images[0])  # converted once
    assert (tmp_path / "cached.png").read_bytes() == (tmp_path / "fresh.png").read_bytes()
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "fresh.png").read_bytes()
    results.save_grid(top, tmp_path / "grid-cached.png", evaluator="judge", pictures=pictures)
    results.save_grid(top, tmp_path / "grid-fresh.png", evaluator="judge")
    assert (tmp_path / "grid-cached.png").read_bytes() == (tmp_path / "grid-fresh.png").read_bytes()


def test_run_json_with_a_nan_still_gets_null_and_its_flag(tmp_path: Path) -> None:
    results.write_json(tmp_path / "run.json", {"best": {"objective": float("nan")}, "ok": [1.5]})
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["best"]["objective"] is None and data["non_finite_values"] == {"/best/objective": "nan"}
    results.write_json(tmp_path / "fine.json", {"a": (1, 2.5)})
    assert (tmp_path / "fine.json").read_text() == json.dumps({"a": [1, 2.5]}, indent=2) + "\n"


def test_rows_are_readable_before_the_appender_syncs(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    appender = store.RowAppender(path, sync_seconds=3600.0)
    appender.append({"key": "a", "status": "ok"})
    assert store.read_rows(path) == {"a": {"key": "a", "status": "ok"}}  # flushed at once
    appender.close()
    appender.close()  # twice is harmless
    assert store.read_rows(path) == {"a": {"key": "a", "status": "ok"}}


def test_bench_cells_keep_no_journal_and_probe_their_output_folder_once(tmp_path: Path, monkeypatch) -> None:
    journals: list[Path] = []
    probes: list[Path] = []
    made = journal.Journal.__init__
    probe = config.check_output_writable

    def counting_journal(self, folder: Path, resume: bool = False) -> None:  # noqa: ANN001
        journals.append(folder)
        made(self, folder, resume)

    def counting_probe(path: Path) -> None:
        probes.append(path)
        probe(path)

    monkeypatch.setattr(journal.Journal, "__init__", counting_journal)
    monkeypatch.setattr(config, "check_output_writable", counting_probe)
    monkeypatch.setattr(planning, "check_output_writable", counting_probe)
    grid = BenchGrid(models=["digits"], strategies=[StrategySpec("random")], budgets=[40], seeds=[0, 1],
                     limit=2, baselines=[], output=str(tmp_path / "bench"), threads=1)
    result = run_bench(grid)
    assert [row["status"] for row in result.rows] == ["ok"] * 4
    assert journals == []
    # the bench's check of its runs folder, then the worker's (its first cell), and no more
    assert probes == [(tmp_path / "bench" / "runs").absolute(), Path(result.rows[0]["run_dir"])]
    for row in result.rows:  # still whole run folders
        run_dir = Path(row["run_dir"])
        assert json.loads((run_dir / "run.json").read_text())["complete"] is True
        assert (run_dir / "best.png").read_bytes() == (run_dir / "top" / "01.png").read_bytes()
        assert {p.name for p in run_dir.iterdir()} >= {"best.png", "baseline.png", "grid.png", "top",
                                                       "best_noise.safetensors", "candidates.jsonl"}
        assert not (run_dir / "journal").exists()
