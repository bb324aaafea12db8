"""The batch size that fit: remembered per (model, resolution, dtype, device) across runs.

When a batch runs out of memory the engine halves the batch size and goes on
(``Engine._in_batches``). The size that then worked is remembered in a small JSON file in the
user's cache folder (``$NOISESEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/noisesearch``, else
``~/.cache/noisesearch``), so that a later run that leaves ``batch_size`` unset starts there
instead of at the model's preferred size and does not pay for the failed batches again.

The size a run uses is in its ``run.json`` (``config.batch_size``, which replay and resume
reuse) with where it came from (``batch_size_from``: ``user``, ``remembered`` or
``model default``). A file that cannot be read or parsed is ignored with a warning, and one
that cannot be written is left as it was with a warning: the memory only saves time, it never
stops a run. Writes are atomic (a reader sees the old file or the new one).
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from noisesearch.files import write_atomic

#: Environment variable naming noisesearch's cache folder.
CACHE_ENV = "NOISESEARCH_CACHE_DIR"
#: The memory's file name in that folder.
FILE_NAME = "batch_sizes.json"
#: ``batch_size_from`` values.
USER, REMEMBERED, MODEL_DEFAULT = "user", "remembered", "model default"
#: The batch size of a model that states no preferred one.
FALLBACK_BATCH_SIZE = 16
_VERSION = 1


class BatchMemoryWarning(UserWarning):
    """The batch-size memory could not be read or written; the run goes on without it."""


def cache_dir() -> Path:
    """noisesearch's cache folder: ``$NOISESEARCH_CACHE_DIR``, ``$XDG_CACHE_HOME/noisesearch``
    or ``~/.cache/noisesearch``."""
    environ = os.environ
    return _cache_dir(environ.get(CACHE_ENV), environ.get("XDG_CACHE_HOME"), environ.get("HOME"))


@functools.lru_cache(maxsize=8)
def _cache_dir(own: str | None, xdg: str | None, home: str | None) -> Path:
    """Resolved once per environment (``Path.home()`` costs ~10 us, asked on every search)."""
    if own:
        return Path(own).expanduser()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "noisesearch"


def memory_file() -> Path:
    environ = os.environ
    return _memory_file(environ.get(CACHE_ENV), environ.get("XDG_CACHE_HOME"), environ.get("HOME"))


@functools.lru_cache(maxsize=8)
def _memory_file(own: str | None, xdg: str | None, home: str | None) -> Path:
    return _cache_dir(own, xdg, home) / FILE_NAME


def key(model_name: str, model: Any, model_options: dict[str, Any]) -> str:
    """``MODEL|RESOLUTION|DTYPE|DEVICE`` of a built model: its name (with a ``path`` option, the
    path too), its image size (else its latent shape), its weights' dtype and the device's name
    (CUDA: the card's, e.g. ``NVIDIA H200``)."""
    path = model_options.get("path")
    name = f"{model_name}@{path}" if path and str(path) not in model_name else str(model_name)
    height, width = getattr(model, "height", None), getattr(model, "width", None)
    if height and width:
        resolution = f"{height}x{width}"
    else:
        resolution = "x".join(str(n) for n in getattr(model, "latent_shape", ()) or ()) or "?"
    dtype = str(getattr(model, "weights_dtype", None) or getattr(model, "dtype", None) or "?")
    return "|".join((name, resolution, dtype.replace("torch.", ""),
                     _device_name(str(getattr(model, "device", "cpu")))))


@functools.lru_cache(maxsize=32)
def _device_name(device: str) -> str:
    """The key's device name, once per device (asked on every search; a CUDA card's name is a
    driver call)."""
    if device.startswith("cuda"):
        import torch

        try:
            return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
        except (RuntimeError, AssertionError, ValueError):  # no CUDA here after all
            return device
    return device.split(":")[0]


#: path -> ((mtime_ns, size), entries) of the last read: every search with an unset batch size
#: asks, and reading and parsing the file each time cost a 5 ms search ~1%.
_read_cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}


#: path -> until when (``time.monotonic()``) it is taken as absent without asking the file
#: system again. Most machines have no memory file, and a loop of small searches asked on every
#: search (a system call, ~1% of a 5 ms search). Another process that writes the file meanwhile
#: is seen a second later: a race that exists anyway (it could write just after the check);
#: this process's own :func:`remember` is seen at once.
_absent_until: dict[Path, float] = {}
ABSENT_RECHECK_S = 1.0


def _read(path: Path) -> dict[str, Any]:
    """The memory's entries (a copy); ``{}`` for no file, and with a warning for a damaged one."""
    now = time.monotonic()
    if _absent_until.get(path, 0.0) > now:
        return {}
    if not os.path.lexists(path):  # most machines: no memory (no exception raised and caught)
        _absent_until[path] = now + ABSENT_RECHECK_S
        return {}
    _absent_until.pop(path, None)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    except OSError:
        stat = None  # read_text below says why
    stamp = (stat.st_mtime_ns, stat.st_size) if stat is not None else None
    cached = _read_cache.get(path)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return dict(cached[1])
    entries = _parse(path)
    if stamp is not None:
        _read_cache[path] = (stamp, entries)
    return dict(entries)


def _parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        warnings.warn(f"cannot read the batch-size memory {path} ({exc}); ignoring it",
                      BatchMemoryWarning, stacklevel=3)
        return {}
    try:
        data = json.loads(text)
        entries = data["entries"]
        if not isinstance(entries, dict):
            raise TypeError("entries is not a table")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        warnings.warn(f"the batch-size memory {path} is damaged ({type(exc).__name__}: {exc}); "
                      f"ignoring it (it is rewritten when a batch size is next remembered)",
                      BatchMemoryWarning, stacklevel=3)
        return {}
    return entries


def recall(memory_key: str | Callable[[], str]) -> int | None:
    """The remembered batch size for ``memory_key``, or None. A callable key is made only when
    the memory has entries (most machines have none; :func:`key` costs a small search ~1%)."""
    entries = _read(memory_file())
    if not entries:
        return None
    memory_key = memory_key() if callable(memory_key) else memory_key
    entry = entries.get(memory_key)
    size = entry.get("batch_size") if isinstance(entry, dict) else None
    if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
        return size
    if entry is not None:
        warnings.warn(f"the batch-size memory's entry {memory_key!r} is damaged ({entry!r}); "
                      f"ignoring it", BatchMemoryWarning, stacklevel=2)
    return None


def remember(memory_key: str | Callable[[], str], batch_size: int, failed: int) -> None:
    """Record that ``batch_size`` worked where ``failed`` ran out of memory."""
    memory_key = memory_key() if callable(memory_key) else memory_key
    path = memory_file()
    entries = _read(path)
    entries[memory_key] = {"batch_size": int(batch_size), "failed": int(failed),
                           "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data = {"version": _VERSION, "entries": entries}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        _absent_until.pop(path, None)  # there now: the next search of this process reads it
    except OSError as exc:
        warnings.warn(f"cannot write the batch-size memory {path} ({exc}); the next run starts "
                      f"from the model's batch size again", BatchMemoryWarning, stacklevel=2)


def choose(
    given: int | None, model: Any, memory_key: str | Callable[[], str], recorded_from: str | None = None,
    cap: int | None = None,
) -> tuple[int, str]:
    """The run's batch size and where it came from: ``given`` (the user's, or a resumed run's:
    then ``recorded_from``, what its run.json said); else the remembered size where it is below
    the model's preferred one; else the model's. ``cap`` bounds a size not given (a model whose
    every batch is padded to the batch size should not pad beyond what a search can use)."""
    if given is not None:
        return int(given), recorded_from or USER
    preferred = int(getattr(model, "preferred_batch_size", FALLBACK_BATCH_SIZE))
    if cap is not None:
        preferred = max(1, min(preferred, int(cap)))
    remembered = recall(memory_key)
    if remembered is not None and remembered < preferred:
        return remembered, REMEMBERED
    return preferred, MODEL_DEFAULT


def recorded_from(run_dir: Path | None) -> str | None:
    """``batch_size_from`` of the run.json in ``run_dir`` (a resumed run keeps it), or None."""
    if run_dir is None:
        return None
    try:
        value = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8")).get("batch_size_from")
    except (OSError, ValueError, AttributeError):
        return None
    return value if value in (USER, REMEMBERED, MODEL_DEFAULT) else None
