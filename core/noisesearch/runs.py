"""Reading run folders back, for ``noisesearch show``, ``runs`` and ``report``.

A run folder may be complete (``run.json`` with ``"complete": true``), still running or
interrupted (``candidates.jsonl`` only, maybe with a half-written last line), or written by
another version of noisesearch: readers here accept all of these and refuse only what they
cannot understand, naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisesearch.errors import NoiseSearchError
from noisesearch.finite import FLAG
from noisesearch.names import model_label
from noisesearch.results import SCHEMA_VERSION

RUN_JSON = "run.json"
CANDIDATES_JSONL = "candidates.jsonl"


class RunFolderError(NoiseSearchError):
    """A folder that is not a run folder, or one this version cannot read."""


@dataclass
class RunRecord:
    """One run folder as read from disk: ``run`` is ``run.json`` (empty while it is not
    written yet), ``candidates`` the lines of ``candidates.jsonl`` (if loaded)."""

    path: Path
    run: dict[str, Any]
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.run.get("complete") is True

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.run.get("config") or {})

    @property
    def status(self) -> str:
        """``complete``, ``failed``, ``interrupted`` or ``running``. A run.json that says
        "running" while no live process holds the folder's lock was killed: interrupted."""
        if self.complete:
            return "complete"
        saved = self.run.get("status")
        if saved in ("failed", "interrupted"):
            return str(saved)
        from noisesearch.locking import held_by_others

        return "running" if held_by_others(self.path) else "interrupted"

    @property
    def error(self) -> str | None:
        error = self.run.get("error")
        return str(error) if error and not self.complete else None

    def describe_status(self) -> str:
        """One line: ``failed: <error>; resume with `noisesearch run --resume RUN` `` etc."""
        status = self.status
        if status in ("complete", "running"):
            return status
        import shlex

        folder = shlex.quote(str(self.path))
        command = f"`noisesearch run --resume {folder}`"
        if status == "failed" and self.run.get("resumable") is False:  # its journal would fail it again
            saved = shlex.quote(str(self.path / RUN_JSON))  # (a run.json's output is not read back)
            again = f"`noisesearch run --config {saved} -o {folder} --overwrite`"
            return (f"failed: {self.error or 'unknown error'}; a resume would replay its journaled scores, "
                    f"so once its cause is fixed start it again with {again}")
        if status == "failed":  # resuming repeats what failed: it helps once the cause is gone
            return f"failed: {self.error or 'unknown error'}; once its cause is fixed, resume with {command}"
        return f"interrupted; resume with {command}"

    @property
    def budget(self) -> dict[str, Any]:
        """The budget, from run.json or (older incomplete runs) the configuration."""
        budget = self.run.get("budget")
        if isinstance(budget, dict):
            return budget
        config = self.config
        candidates, nfe = config.get("candidates"), config.get("budget_nfe")
        if candidates is None and nfe is None and config:
            from noisesearch.config import DEFAULT_CANDIDATES

            candidates = DEFAULT_CANDIDATES
        return {"candidates": candidates, "nfe": nfe}

    @property
    def objective(self) -> str | None:
        verifiers = self.config.get("verifiers") or []
        return verifiers[0] if verifiers else None

    @property
    def evaluator(self) -> str | None:
        name = self.config.get("evaluator")
        return name if name and name != "none" else None

    @property
    def judge(self) -> str | None:
        """The evaluator as every view shows it: held out, or also searched on (the oracle
        ceiling of ``--verifier shapes-judge``; an ensemble's member), which is no independent
        judgement. ``searched``: the verifiers and their members (older runs: the verifiers)."""
        name = self.evaluator
        if name is None:
            return None
        return judge_label(name, self.run.get("searched") or self.config.get("verifiers") or [])


def judge_label(evaluator: str, searched: Sequence[str]) -> str:
    """The evaluator as every view names it: independent, or also searched on (``searched``: the
    verifiers and their members), which is no independent judgement."""
    if evaluator in searched:
        return f"{evaluator} (also searched on: not independent)"
    return f"{evaluator} (independent, not searched on)"


def run_folder(path: Path | str) -> Path:
    """The folder of a run, given the folder itself or its ``run.json``."""
    path = Path(path)
    if path.is_file() and path.name == RUN_JSON:
        return path.parent
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{str(path)!r} is a file, not a run folder; give the folder or its {RUN_JSON}")
    if not path.is_dir():
        raise RunFolderError(f"run folder {str(path)!r} does not exist")
    if not (path / RUN_JSON).exists() and not (path / CANDIDATES_JSONL).exists():
        raise RunFolderError(
            f"{str(path)!r} is not a run folder: it has neither {RUN_JSON} nor {CANDIDATES_JSONL}"
        )
    return path


def read_run_json(path: Path) -> dict[str, Any]:
    """``run.json``, checked: a JSON object of a schema version this code can read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise RunFolderError(f"{path}: no valid schema_version (got {version!r})")
    if version > SCHEMA_VERSION:
        raise RunFolderError(
            f"{path}: schema version {version} is newer than this noisesearch reads "
            f"({SCHEMA_VERSION}); upgrade noisesearch"
        )
    for key, value, fits, expected in _shapes(data):
        if not fits:
            raise RunFolderError(
                f"{path}: its {key!r} is {_kind(value)}, not {expected}; the file was "
                f"damaged or not written by noisesearch"
            )
    return data


#: The top-level fields of run.json that are tables (JSON objects) whenever present.
_TABLES = ("config", "condition", "usage", "budget", "best", "baseline", "environment", "non_finite",
          "verdicts")


def _shapes(data: dict[str, Any]) -> Iterator[tuple[str, Any, bool, str]]:
    """``(field, value, fits, what it should be)`` for each field of run.json that ``show``,
    ``runs`` and ``report`` read, so that a hand-edited file is refused in one line naming the
    field rather than failing deep in the page. Absent fields fit (a partial run lacks them).
    Lazy, in an order where each check may rely on the earlier ones having passed."""
    for key in _TABLES:
        yield key, data.get(key), _table(data.get(key)), "a table"
    for key in ("best", "baseline"):
        scores = (data.get(key) or {}).get("scores")
        yield f"{key}.scores", scores, _table(scores), "a table"
    top = data.get("top")
    yield "top", top, top is None or isinstance(top, list), "a list of candidates"
    for i, candidate in enumerate(top or []):
        yield f"top[{i}]", candidate, isinstance(candidate, dict), "a table"
        yield f"top[{i}].scores", candidate.get("scores"), _table(candidate.get("scores")), "a table"
    config = data.get("config") or {}
    verifiers, evaluator = config.get("verifiers"), config.get("evaluator")
    yield "config.verifiers", verifiers, verifiers is None or isinstance(verifiers, list), "a list of names"
    for i, name in enumerate(verifiers or []):
        yield f"config.verifiers[{i}]", name, isinstance(name, str), "a name"
    yield "config.evaluator", evaluator, evaluator is None or isinstance(evaluator, str), "a name"
    counts = (data.get("non_finite") or {}).get("scores")
    yield "non_finite.scores", counts, _table(counts), "a table"
    verdicts = data.get("verdicts") or {}
    for key in ("baseline_clauses", "best_clauses"):
        clauses = verdicts.get(key)
        yield f"verdicts.{key}", clauses, clauses is None or isinstance(clauses, list), "a list"
        for i, pair in enumerate(clauses or []):
            fits = isinstance(pair, list) and len(pair) == 2
            yield f"verdicts.{key}[{i}]", pair, fits, "a [clause, holds] pair"


def _table(value: Any) -> bool:
    return value is None or isinstance(value, dict)


def _kind(value: Any) -> str:
    """``a list``, ``an int``, ``null``: what a JSON value is, for a message."""
    if value is None:
        return "null"
    noun = type(value).__name__
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _candidate_problem(row: Any) -> str | None:
    """What of a ``candidates.jsonl`` line the scaling plot and ``runs`` cannot read: they
    compare scores and the objective, and add up NFEs."""
    if not isinstance(row, dict) or not isinstance(row.get("scores"), dict):
        return "expected a candidate object with scores"
    numbers = {key: row.get(key) for key in ("objective", "nfe", "nfe_spent")}
    numbers.update({f"scores.{name}": value for name, value in row["scores"].items()})
    for key, value in numbers.items():
        if value is not None and not isinstance(value, (int, float)):
            return f"its {key!r} is {_kind(value)}, not a number"
    if not _table(row.get(FLAG)):
        return f"its {FLAG!r} is {_kind(row[FLAG])}, not a table"
    return None


def read_candidates(path: Path) -> list[dict[str, Any]]:
    """Every candidate line of ``candidates.jsonl``; a half-written last line (a run that
    was killed while writing) is dropped, a broken line elsewhere is an error."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise RunFolderError(f"{path}:{number}: not valid JSON ({exc})") from None
        problem = _candidate_problem(row)
        if problem:
            raise RunFolderError(f"{path}:{number}: {problem}")
        rows.append(row)
    return rows


def load_run(path: Path | str, candidates: bool = True) -> RunRecord:
    """Read a run folder (or its ``run.json``); ``candidates=False`` skips the JSONL."""
    folder = run_folder(path)
    run_json = folder / RUN_JSON
    run = read_run_json(run_json) if run_json.exists() else {}
    rows = read_candidates(folder / CANDIDATES_JSONL) if candidates else []
    return RunRecord(folder, run, rows)


def find_runs(root: Path | str) -> list[Path]:
    """Run folders at any depth under ``root`` (a prompts file nests them), sorted by path."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"{str(root)!r} is a file, not a folder to look for runs in")
    if not root.is_dir():
        raise RunFolderError(f"folder {str(root)!r} does not exist")
    found = {p.parent for name in (RUN_JSON, CANDIDATES_JSONL) for p in root.rglob(name)}
    return sorted(found)


def run_summary(record: RunRecord, root: Path | None = None) -> dict[str, Any]:
    """One line of ``noisesearch runs``: what ran and what it found.

    Complete runs are summarised from ``run.json``; others from their candidates so far.
    """
    run, config = record.run, record.config
    usage = run.get("usage") or {}
    best = (run.get("best") or {}).get("objective")
    nfe, count = usage.get("nfe"), usage.get("candidates")
    rows = record.candidates
    if not record.complete and rows:
        best = max((row.get("objective") for row in rows if row.get("objective") is not None),
                   default=None)
        count = len(rows)
        nfe = rows[-1].get("nfe_spent", sum(int(row.get("nfe", 0)) for row in rows))
    budget = record.budget
    name = str(record.path.relative_to(root)) if root and record.path != root else str(record.path)
    return {
        "run": name,
        "path": str(record.path),
        "model": model_label(config["model"], config.get("model_options")) if config.get("model") else None,
        "condition": run.get("condition"),
        "strategy": config.get("strategy"),
        "objective": record.objective,
        "nfe": nfe,
        "budget_nfe": budget.get("nfe"),
        "candidates": count,
        "budget_candidates": budget.get("candidates"),
        "best": best,
        "complete": record.complete,
        "status": record.status,
        "run_error": record.error,
        "status_line": record.describe_status(),
        "non_finite": _non_finite_count(record),
        "created": (run.get("environment") or {}).get("created"),
    }


def _non_finite_count(record: RunRecord) -> int | None:
    """Candidates whose objective was NaN or infinite (never selected)."""
    counted = (record.run.get("non_finite") or {}).get("candidates")
    if isinstance(counted, int):
        return counted
    if not record.candidates:
        return None
    return sum("/objective" in (row.get(FLAG) or {}) for row in record.candidates)


def list_runs(root: Path | str) -> list[dict[str, Any]]:
    """:func:`run_summary` of every run folder under ``root``; an unreadable folder is
    listed with its error rather than hiding the others."""
    root = Path(root)
    summaries = []
    for folder in find_runs(root):
        try:
            record = load_run(folder, candidates=False)
            if not record.complete:
                record = load_run(folder)
            summaries.append(run_summary(record, root))
        except RunFolderError as exc:
            summaries.append({"run": str(folder.relative_to(root)), "path": str(folder),
                              "complete": False, "error": str(exc)})
    return summaries
