"""``results.jsonl`` and ``results.csv``: one row per cell, written so that an interrupted
bench continues with no duplicated or missing rows.

While a bench runs, each finished cell's row is appended and flushed; a half-written last
line (a crash mid-write) is ignored when read back. At the end the file is rewritten in the
grid's order with one row per cell, so an interrupted and resumed bench ends with the same
file as an uninterrupted one, apart from the timing columns.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from noisesearch.files import write_atomic

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The last row written for each key (a retried failed cell replaces its failure)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the half-written last line of an interrupted bench
        if isinstance(row, dict) and "key" in row:
            rows[row["key"]] = row
    return rows


class RowAppender:
    """Appends rows to ``results.jsonl`` as cells finish, each flushed to the OS at once (a
    crashed or killed bench loses none) and synced to disk at most every ``sync_seconds`` (the
    kernel's own writeback period) and on close: an fsync per row cost 10-30 ms on a busy
    disk, as much as a small cell's search. A power loss may lose the rows since the last
    sync; their cells are then run again (a leftover run folder is removed first, and run
    folders are not synced either), so nothing is duplicated."""

    def __init__(self, path: Path, sync_seconds: float = 30.0) -> None:
        self.path = path
        _drop_partial_line(path)
        self._handle = path.open("a", encoding="utf-8")
        self.sync_seconds = sync_seconds
        self._synced = time.monotonic()

    def append(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, sort_keys=True) + "\n")
        self._handle.flush()
        if time.monotonic() - self._synced >= self.sync_seconds:
            self._sync()

    def _sync(self) -> None:
        os.fsync(self._handle.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        if not self._handle.closed:
            self._sync()
            self._handle.close()


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that an interrupted write left without its newline."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as handle:
            handle.truncate(cut)


def write_final(folder: Path, rows: list[dict[str, Any]]) -> None:
    """``results.jsonl`` in grid order (atomically) and ``results.csv`` beside it."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    write_atomic(folder / RESULTS_JSONL, text.encode())
    write_atomic(folder / RESULTS_CSV, to_csv(rows).encode())


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One row per cell; every score in a ``score:NAME`` column, every evaluator's verdict on the
    winner in an ``agrees:NAME`` column."""
    from noisesearch.bench.cells import agrees_of

    names = sorted({name for row in rows for name in (row.get("scores") or {})})
    judges = sorted({name for row in rows for name in (row.get("evaluators") or [])})
    columns = ["key", "model", "strategy", "kind", "verifier", "budget", "prompt", "label", "category",
               "seed", "status", "nfe", "candidates", "steps", "objective",
               *[f"score:{name}" for name in names], *[f"agrees:{name}" for name in judges],
               "diversity", "seconds", "search_seconds", "run_dir", "error"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        scores = row.get("scores") or {}
        writer.writerow([
            _cell(scores.get(column[6:])) if column.startswith("score:")
            else _cell(agrees_of(row, column[7:])) if column.startswith("agrees:")
            else _cell(row.get(column))
            for column in columns
        ])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
