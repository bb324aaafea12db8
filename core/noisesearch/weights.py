"""Where an option that names weights points: a local file or folder, a hub id whose files are in
the local hub cache, or a hub id to download. Checked before anything loads (the verifier's
``describe``, called while planning, so that ``--dry-run`` catches it), and refused with a
:class:`~noisesearch.errors.ConfigError` naming the option and the fix:

- a value that looks like a path (``/x``, ``./x``, ``~/x``, ``x.pt``, ``a/b/c``, or ``a/b`` where
  the folder ``a`` exists here) that does not exist: ``<verifier>.<option>: '<path>' is no file or
  folder``;
- a local folder without the files the option needs;
- a hub id whose files are not in the hub cache while the hub cannot be used (``HF_HUB_OFFLINE=1``,
  or no connection to it): the ``hf download`` command that fetches them, or a local path to pass.

A hub id that is cached while the hub cannot be reached is loaded with ``local_files_only=True``
(:meth:`Source.hub_kwargs`), so that huggingface_hub's retries (about 25 s per missing
optional file) are never waited for. With the hub reachable, loading is plain ``from_pretrained``.

Used by the contrib verifiers (noisesearch-imagereward, noisesearch-pickscore, noisesearch-vlm)
and by any plugin whose options name weights.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisesearch.errors import ConfigError

#: ``name`` or ``owner/name``, as the hub spells repository ids.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: Endings of files, never of hub ids: such a value is a path.
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".json", ".pkl", ".txt", ".model")
#: Seconds to wait for the hub's host to accept a connection before calling it unreachable.
HUB_PROBE_SECONDS = 3.0
#: Files that make a folder (or a cached hub repository) a transformers tokenizer: any one of them.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json")
#: What one option needs: files, each a name or a tuple of names of which one is enough.
Needs = Sequence["str | tuple[str, ...]"]

_REACHABILITY: dict[str, str | None] = {}


@dataclass(frozen=True)
class Source:
    """A located option value: ``path`` on this machine, else the hub id ``value``."""

    field: str
    value: str
    path: Path | None
    download: str

    @property
    def hub(self) -> bool:
        return self.path is None

    @property
    def load_from(self) -> str:
        """What to give ``from_pretrained``: the local path, or the hub id."""
        return str(self.path) if self.path is not None else self.value

    @property
    def local_files_only(self) -> bool:
        """Load from the hub cache alone: a hub id (located, so cached) while the hub cannot
        be used. A local path needs no hub at all."""
        return self.hub and hub_unusable() is not None

    def hub_kwargs(self, model: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained``: ``local_files_only`` when
        :attr:`local_files_only`; for a model (``model=True``) its adapter lookup too, which
        transformers' auto classes run without it (5.x: about 25 s of retries for an
        ``adapter_config.json`` that is not there)."""
        if not self.local_files_only:
            return {}
        return {"local_files_only": True, **({"adapter_kwargs": {"local_files_only": True}} if model else {})}

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Around ``from_pretrained``: a missing file, a refused download or a bad id becomes a
        :class:`ConfigError` of this option, with the way to fetch it for a hub id."""
        try:
            yield
        except (OSError, ValueError) as exc:
            from huggingface_hub.errors import HFValidationError

            if isinstance(exc, ValueError) and not isinstance(exc, HFValidationError):
                raise
            detail = _first_line(exc)
            if self.hub:
                raise ConfigError(
                    self.field,
                    f"cannot load hub id {self.value!r} ({type(exc).__name__}: {detail}); download it "
                    f"with `{self.download}` or pass a local path",
                ) from None
            raise ConfigError(
                self.field, f"cannot load {self.value!r} ({type(exc).__name__}: {detail})"
            ) from None


def looks_like_path(value: str) -> bool:
    """Whether ``value`` means a file or folder on this machine rather than a hub id."""
    if value.startswith(("/", ".", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    if HUB_ID.match(value) is None or value.lower().endswith(FILE_SUFFIXES):
        return True
    return "/" in value and Path(value).parent.is_dir()  # a relative path under an existing folder


def locate(field: str, value: str, needs: Needs, download: str, *, file: bool = False) -> Source:
    """Check an option naming weights without loading them; a :class:`ConfigError` naming
    ``field`` when it cannot load.

    :param field: ``<verifier>.<option>``, as ``--verifier-opt`` spells it.
    :param needs: the files a folder or a cached hub repository must hold.
    :param download: the arguments of ``hf download`` after the hub id that fetch what is needed
        (``""``: the whole repository).
    :param file: a local file is accepted as it is (a checkpoint); otherwise it must be a folder.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, f"expected a hub id or a local path, got {value!r}")
    command = f"hf download {value} {download}".strip()
    path = Path(value).expanduser()
    if path.is_file():
        if not file:
            raise ConfigError(field, f"{value!r} is a file; give a folder or a hub id")
        return Source(field, value, path, command)
    if path.is_dir():
        missing = [need for need in needs if not any((path / name).is_file() for name in _names(need))]
        if missing:
            raise ConfigError(field, f"the folder {value!r} has no {_spelled(missing[0])}")
        return Source(field, value, path, command)
    if looks_like_path(value):
        raise ConfigError(field, f"{value!r} is no file or folder")
    missing = _not_cached(field, value, needs)
    if missing:
        unusable = hub_unusable()
        if unusable is not None:
            raise ConfigError(
                field,
                f"{value!r} is no local file or folder, and as a hub id its {_spelled(missing[0])} is not "
                f"in the local hub cache while {unusable}. Download it where there is a network "
                f"(`{command}`) into the hub cache used here (HF_HUB_CACHE or HF_HOME), or pass a "
                f"local path: --verifier-opt {field}=PATH",
            )
    return Source(field, value, None, command)


def check_all(*checks: tuple[str, str, Needs, str] | tuple[str, str, Needs, str, bool]) -> list[Source]:
    """:func:`locate` each ``(field, value, needs, download[, file])``; one :class:`ConfigError`
    naming every option that cannot load (the first as its field), so that a machine missing two
    things hears of both at once."""
    sources, problems = [], []
    for check in checks:
        field, value, needs, download, *rest = check
        try:
            sources.append(locate(field, value, needs, download, file=bool(rest and rest[0])))
        except ConfigError as exc:
            problems.append(exc)
    if problems:
        first, *others = problems
        message = str(first)[len(first.field) + 2:]
        raise ConfigError(first.field, "; ".join([message, *map(str, others)]))
    return sources


def hub_unusable() -> str | None:
    """Why the hub cannot be used now: ``HF_HUB_OFFLINE=1``, or :func:`hub_unreachable`'s reason;
    ``None`` if it can, or if we cannot tell (behind a proxy)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1"
    unreachable = hub_unreachable()
    return None if unreachable is None else f"the hub cannot be reached ({unreachable})"


def hub_unreachable() -> str | None:
    """``"<host>: <reason>"`` where the hub's host does not accept a connection (one TCP connection
    of at most :data:`HUB_PROBE_SECONDS`, once per process and endpoint), so that a missing file
    fails in seconds, not after huggingface_hub's retries; ``None`` if it does, or if we cannot
    tell (``HF_HUB_OFFLINE``, which huggingface_hub handles itself; a proxy)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    endpoint = constants.ENDPOINT
    if endpoint not in _REACHABILITY:
        result = None
        proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
        if not any(os.environ.get(name) for name in proxies):
            url = urlparse(endpoint)
            host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
            try:
                socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
            except OSError as exc:
                result = f"{host}: {exc.strerror or exc}"
        _REACHABILITY[endpoint] = result
    return _REACHABILITY[endpoint]


def _not_cached(field: str, repo_id: str, needs: Needs) -> list[str | tuple[str, ...]]:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    missing = []
    for need in needs:
        try:
            found = any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in _names(need))
        except HFValidationError as exc:
            raise ConfigError(field, f"{repo_id!r} is no file or folder, nor a hub id ({exc})") from None
        if not found:
            missing.append(need)
    return missing


def _names(need: str | tuple[str, ...]) -> tuple[str, ...]:
    return (need,) if isinstance(need, str) else need


def _spelled(need: str | tuple[str, ...]) -> str:
    names = _names(need)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
