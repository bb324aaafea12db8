"""One writer per run folder: a lock file, and no silent writing over a finished run.

A bench folder (``noisesearch bench``) is locked the same way for the whole bench; the
messages then say "bench folder" (``what``).

``RUN/.lock`` holds the writer's pid, host and command. It appears whole or not at all: the
record is written to a temporary file (``.lock.<random>.tmp``), which is then hard-linked to
``.lock`` (``os.link`` fails if ``.lock`` exists: exclusive, and atomic on local file systems
and NFS), so an interrupt or a kill at any moment leaves either no lock or a complete one,
never an empty one that names nobody. (Where hard links are not supported, the lock is
created with ``O_CREAT | O_EXCL`` and written afterwards.) A second ``run``, ``--resume`` or
``report`` on the folder is refused, naming that process. A lock whose process is gone (same
host, pid not running) is stale: it is broken under a second exclusive file, so that two
processes finding the same stale lock cannot both take the folder. A lock that is empty or
unreadable (written by an earlier version that was interrupted, or damaged) is stale once it
is older than ``EMPTY_GRACE_S``. A lock from another host is never guessed stale: the message
says which file to delete once that run is known to be dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from noisesearch.errors import ConfigError, NoiseSearchError

LOCK_FILE = ".lock"
#: A lock-breaking file older than this belongs to a process that died while breaking.
BREAK_TIMEOUT_S = 10.0
#: An empty or unreadable lock older than this is stale: no writer takes that long to write
#: one (with hard links none is ever seen empty; without, it is empty for microseconds).
EMPTY_GRACE_S = 10.0
#: What a run writes in its folder; ``--overwrite`` removes these and nothing else.
RUN_FILES = (
    "run.json", "candidates.jsonl", "best.png", "baseline.png", "grid.png", "scaling.png",
    "report.html", "replay.png", "best_noise.safetensors",
)
RUN_FOLDERS = ("top", "journal")

_held: set[Path] = set()  # folders this process holds, so that nested holders re-enter


class FolderInUse(NoiseSearchError):
    """Another process is writing to this run folder."""


def _owner_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:500],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_lock(folder: Path) -> dict[str, Any] | None:
    """The record of the process holding ``folder``, or ``None`` if it is not locked."""
    try:
        data = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8") or "{}")
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # empty or damaged content: held by someone unknown (stale once old)
    except OSError as exc:  # unreadable here (permissions, I/O): held, never taken over
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    return data if isinstance(data, dict) else {}


def holder_alive(record: dict[str, Any]) -> bool | None:
    """Whether the lock's process runs: ``None`` when this host cannot tell (another host)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _try_create(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record``, whole, unless it exists (then ``False``)."""
    import uuid

    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            json.dump(record, handle)
        try:
            os.link(temporary, path)  # exclusive: fails if path exists, whatever it holds
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: exclusive create, then write
            return _create_then_write(path, record)
        return True
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _create_then_write(path: Path, record: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return True


def _remove_old_temporaries(folder: Path) -> None:
    """Temporary lock records that a killed process left (``kill -9`` between writing one and
    removing it): none lives more than a moment."""
    for path in folder.glob(f"{LOCK_FILE}.*.tmp"):
        age = _age(path)
        if age is not None and age > BREAK_TIMEOUT_S:
            with contextlib.suppress(OSError):
                path.unlink()


def _age(path: Path) -> float | None:
    """Seconds since ``path`` was last written, or ``None`` if it is gone."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def _empty_is_stale(folder: Path) -> bool:
    """Whether ``folder``'s lock, empty or unreadable, is older than ``EMPTY_GRACE_S``."""
    age = _age(folder / LOCK_FILE)
    return age is not None and age > EMPTY_GRACE_S


def _stale(folder: Path, record: dict[str, Any]) -> bool:
    """Whether a lock with ``record`` (``{}``: empty or unreadable) is stale."""
    return holder_alive(record) is False if record else _empty_is_stale(folder)


def _break_stale(folder: Path, stale: dict[str, Any]) -> None:
    """Remove a stale lock, unless another process broke it first and took the folder."""
    breaker = folder / (LOCK_FILE + ".break")
    if not _try_create(breaker, _owner_record()):
        age = _age(breaker)
        if age is not None and age > BREAK_TIMEOUT_S:
            breaker.unlink(missing_ok=True)
        return  # someone else is breaking it; the caller tries again
    try:
        # Still the same dead holder (an empty lock: still empty, and still old, so not one
        # that another process has just made without hard links).
        if read_lock(folder) == stale and _stale(folder, stale):
            (folder / LOCK_FILE).unlink(missing_ok=True)
    finally:
        breaker.unlink(missing_ok=True)


def _describe(record: dict[str, Any]) -> str:
    if not record:
        return ("another process (its lock file is empty or damaged: if it is still so after "
                f"{EMPTY_GRACE_S:.0f} s, it is taken over)")
    if "unreadable" in record:
        return f"a process whose lock file cannot be read here ({record['unreadable']})"
    command = f" ({record['command']})" if record.get("command") else ""
    since = f", since {record['started']}" if record.get("started") else ""
    return f"process {record.get('pid')} on {record.get('host')}{command}{since}"


def _in_use(folder: Path, record: dict[str, Any], what: str) -> str:
    """Who holds ``folder``; for a holder on another host, which file to delete once it is dead."""
    hint = ""
    if not record:
        hint = f"; or delete {folder / LOCK_FILE} once no process is using the folder"
    elif holder_alive(record) is None:
        hint = f"; if that process is dead, delete {folder / LOCK_FILE}"
    return f"{what} {str(folder)!r} is in use by {_describe(record)}{hint}"


def acquire(folder: Path, what: str = "run folder") -> None:
    """Take ``folder`` (which must exist) for this process, or raise :class:`FolderInUse`;
    ``what`` names the kind of folder in the message."""
    for _ in range(20):
        if _try_create(folder / LOCK_FILE, _owner_record()):
            _remove_old_temporaries(folder)
            return
        record = read_lock(folder)
        if record is None:
            continue  # released in between
        if _stale(folder, record):
            _break_stale(folder, record)
            continue
        raise FolderInUse(_in_use(folder, record, what))
    raise FolderInUse(f"could not lock {what} {str(folder)!r}: its lock keeps changing hands")


def held_by_others(folder: Path) -> bool:
    """Whether another process (alive, or on another host) holds ``folder``'s lock."""
    record = read_lock(folder) if folder.is_dir() else None
    if record is None or folder.resolve() in _held:
        return False
    return not _stale(folder, record)


def check_unlocked(folder: Path, what: str = "run folder") -> None:
    """Refuse early (before weights load) a folder that a live process holds."""
    record = read_lock(folder) if folder.is_dir() else None
    live = record is not None and not _stale(folder, record)
    if live and folder.resolve() not in _held:
        raise FolderInUse(_in_use(folder, record, what))


def release(folder: Path) -> None:
    record = read_lock(folder)
    if record and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        (folder / LOCK_FILE).unlink(missing_ok=True)


@contextmanager
def hold(folder: Path, what: str = "run folder") -> Iterator[None]:
    """Hold ``folder``'s lock for the block; re-entrant within one process."""
    key = folder.resolve()
    if key in _held:
        yield
        return
    acquire(folder, what)
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        release(folder)


def is_run_folder(folder: Path) -> bool:
    return (folder / "run.json").exists() or (folder / "candidates.jsonl").exists()


def check_fresh(folder: Path, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds one, unless ``overwrite``."""
    if overwrite or not folder.is_dir() or not is_run_folder(folder):
        return
    state = _saved_status(folder)
    what = "a finished run" if state == "complete" else f"a run that did not finish ({state})"
    resume = "" if state == "complete" else f", `noisesearch run --resume {folder}` to continue it"
    raise ConfigError(
        "output", f"{str(folder)!r} holds {what}; pass --overwrite to replace it{resume}, or choose "
        f"another --output"
    )


def _saved_status(folder: Path) -> str:
    try:
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable run.json"
    if not isinstance(run, dict):
        return "no readable run.json"
    return "complete" if run.get("complete") is True else str(run.get("status") or "incomplete")


def clear_run_files(folder: Path) -> None:
    """Remove what a previous run wrote (and only that): no stale ``top/07.png`` survives."""
    import shutil

    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    top = folder / "top"
    if top.is_dir():
        for image in top.glob("[0-9][0-9]*.png"):
            image.unlink()
        if not any(top.iterdir()):
            top.rmdir()
    shutil.rmtree(folder / "journal", ignore_errors=True)
