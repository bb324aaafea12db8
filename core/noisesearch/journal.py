"""The engine's journal: the outputs of every expensive call, in order, so that an
interrupted run resumes where it stopped and ends exactly as an uninterrupted one.

A search is deterministic given its configuration: the strategy makes the same calls in the
same order. On resume the engine re-runs the strategy from the start and serves each call
already journaled from disk (charging its NFEs again, so budgets play out the same) instead of
computing it. One file per call, ``NNNNNN-<kind>.safetensors``, written atomically; a call
interrupted half-way simply has no file and is computed again.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisesearch.errors import NoiseSearchError
from noisesearch.files import write_atomic

if TYPE_CHECKING:
    import torch

_ENTRY = re.compile(r"^(\d{6})-([a-z]+)\.safetensors$")
FINGERPRINT = "fingerprint.json"


class JournalMismatch(NoiseSearchError):
    """The resumed run asked for a different call than the journal holds: the configuration,
    the code or the plugins changed since the run was interrupted."""


class JournalDamaged(NoiseSearchError):
    """A journal entry that cannot be read (truncated, overwritten, not safetensors). Entries
    are written atomically, so this is damage from outside; nothing is resumed from it."""


def read_meta(path: Path) -> dict[str, Any]:
    """An entry's metadata, read from its header only; checks the file is whole."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["meta"])
        if not isinstance(meta, dict):
            raise TypeError("meta is not a JSON object")
        return meta
    except Exception as exc:  # safetensors, JSON or key errors: the file is not ours
        raise JournalDamaged(
            f"resuming: journal entry {path} is damaged ({type(exc).__name__}: {exc}). Delete "
            f"it and the entries numbered after it to recompute those calls, or start a new run."
        ) from None


class Journal:
    """Reads back the calls of an interrupted run, then records the new ones."""

    def __init__(self, folder: Path, resume: bool = False) -> None:
        self.folder = folder
        if not resume and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._entries = self._consecutive_entries() if resume else []
        self.index = 0

    def _consecutive_entries(self) -> list[tuple[str, Path]]:
        found = {}
        for path in self.folder.iterdir():
            match = _ENTRY.match(path.name)
            if match:
                found[int(match.group(1))] = (match.group(2), path)
        entries = []
        while len(entries) in found:
            entries.append(found[len(entries)])
            read_meta(entries[-1][1])  # refuse a damaged journal before any work
        return entries

    @property
    def replaying(self) -> bool:
        return self.index < len(self._entries)

    def next_batch_size(self) -> int | None:
        """The engine's batch size when the next recorded call was made."""
        return read_meta(self._entries[self.index][1]).get("batch_size")

    @property
    def left(self) -> int:
        """Recorded calls not yet read back."""
        return len(self._entries) - self.index

    def read(self, kind: str, rows: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        entry = self.peek(kind, rows)
        self.index += 1
        return entry

    def peek(self, kind: str, rows: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The next recorded call, as :meth:`read` gives it, left to be read: the engine builds
        a chunk's work from it (full samples decode the journaled latents) before using it."""
        from safetensors.torch import load_file

        recorded_kind, path = self._entries[self.index]
        meta = read_meta(path)
        if recorded_kind != kind or meta.get("rows") != rows:
            raise JournalMismatch(
                f"resuming: call {self.index} is a {kind} of {rows} rows, but the run recorded a "
                f"{recorded_kind} of {meta.get('rows')} rows; the configuration or the plugins "
                f"changed since it stopped. Start a new run instead."
            )
        return load_file(str(path)), meta

    def write(self, kind: str, rows: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        from safetensors.torch import save

        payload = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        data = save(payload, metadata={"meta": json.dumps({**meta, "rows": rows})})
        write_atomic(self.folder / f"{self.index:06d}-{kind}.safetensors", data)
        self.index += 1

    def record_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """What determines the run's result (``noisesearch.fingerprint``), for resuming."""
        write_atomic(self.folder / FINGERPRINT, json.dumps(fingerprint, indent=1).encode())

    def recorded_fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint the run recorded when it started; ``None`` for older journals."""
        path = self.folder / FINGERPRINT
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        except (OSError, ValueError) as exc:
            raise JournalMismatch(f"resuming: {path} is damaged ({exc}); start a new run instead") from None
        return data

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
