"""What determines a run's result, in a few hundred bytes: so that ``--resume`` refuses to
continue a run whose configuration, plugins or weights changed since it stopped.

The fingerprint holds the effective configuration (less where it is written), the model,
verifiers, evaluator and strategy with the plugin and distribution version of each, and a
cheap fingerprint of the weights: never their bytes. A local file contributes its size,
mtime and, for safetensors, a hash of its header (names, shapes, dtypes and offsets of every
tensor: a few kB); a hub id contributes the cached revision and its file names. A model
factory can name more weight sources with a classmethod ``weight_sources(**options)``
returning local paths or hub ids.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisesearch.errors import ConfigError
from noisesearch.faults import Owner
from noisesearch.hookspecs import PROJECT_NAME
from noisesearch.plugins import DEFAULT_PLUGINS, registries_built

if TYPE_CHECKING:
    from noisesearch.planning import Plan
    from noisesearch.registry import Entry

#: Config fields that say where or how a run is written or computed, not what it computes.
NOT_RESULT_FIELDS = ("output", "overwrite", "overlap")
#: Weight files listed per folder, at most (a folder of a hub snapshot has a few dozen).
MAX_FILES = 200
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".txt", ".model")


def plugin_distribution(plugin: str) -> tuple[str, str | None]:
    """The distribution (and its version) that ships plugin ``plugin``."""
    return _plugin_distribution(plugin, registries_built())


@functools.lru_cache(maxsize=256)  # asked for every plugin of every search: read once per registries build
def _plugin_distribution(plugin: str, build: int) -> tuple[str, str | None]:
    if plugin in DEFAULT_PLUGINS or plugin.startswith("noisesearch_builtin"):
        return PROJECT_NAME, _version(PROJECT_NAME)
    for ep in metadata.entry_points(group=PROJECT_NAME):
        if ep.name == plugin and ep.dist is not None:
            return ep.dist.name, ep.dist.version
    return plugin, None


@functools.cache  # read once per process (a bench plans many runs)
def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def owner(entry: Entry) -> Owner:
    """Who to blame for ``entry``'s exceptions (``noisesearch.faults``)."""
    return _owner(entry.kind, entry.name, entry.plugin, registries_built())


@functools.lru_cache(maxsize=256)
def _owner(kind: str, name: str, plugin: str, build: int) -> Owner:
    """One :class:`Owner` per plugin object and registries build (asked for every plugin of
    every search)."""
    return Owner(kind, name, plugin_distribution(plugin)[0])


def owners(plan: Plan) -> dict[str, Owner]:
    """``"model"``, ``"strategy"`` and every verifier's name (the evaluator's included)."""
    found = {"model": owner(plan.model), "strategy": owner(plan.strategy)}
    for entry in [*plan.verifiers, *([plan.evaluator] if plan.evaluator else [])]:
        found[entry.name] = owner(entry)
    return found


def _component(entry: Entry, options: dict[str, Any]) -> dict[str, Any]:
    distribution, version = plugin_distribution(entry.plugin)
    return {"name": entry.name, "plugin": entry.plugin, "distribution": distribution,
            "version": version, "weights": weights_fingerprint(entry, options)}


def fingerprint(plan: Plan) -> dict[str, Any]:
    """The fingerprint of a checked plan (cheap: reads no weights)."""
    config = {k: v for k, v in plan.config.to_json().items() if k not in NOT_RESULT_FIELDS}
    options = plan.config.verifier_options
    return {
        "config": config,
        "model": _component(plan.model, plan.config.model_options),
        "verifiers": {e.name: _component(e, options.get(e.name, {})) for e in plan.verifiers},
        "evaluator": _component(plan.evaluator, options.get(plan.evaluator.name, {}))
        if plan.evaluator else None,
        "strategy": _component(plan.strategy, plan.config.strategy_options),
    }


def weights_fingerprint(entry: Entry, options: dict[str, Any]) -> dict[str, Any]:
    """Local weight files (size, mtime, safetensors header hash) and hub revisions named by
    ``options`` or by the factory's ``weight_sources(**options)``."""
    sources = [value for value in options.values() if isinstance(value, str) and value]
    named = getattr(entry.factory, "weight_sources", None)
    if callable(named):
        sources += [str(source) for source in named(**options)]
    found: dict[str, Any] = {}
    for source in sources:
        path = Path(source).expanduser()
        if path.is_file():
            found[source] = _file(path)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
            found[source] = {str(p.relative_to(path)): _file(p) for p in files[:MAX_FILES]}
        elif source.count("/") == 1 and not source.startswith((".", "/")):
            hub = _hub_revision(source, options.get("revision"))
            if hub is not None:
                found[source] = hub
    return found


def _file(path: Path) -> dict[str, Any]:
    stat = path.stat()
    info: dict[str, Any] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if path.suffix == ".safetensors":
        info["header_sha256"] = _safetensors_header_hash(path)
    return info


def _safetensors_header_hash(path: Path) -> str | None:
    """SHA-256 of the JSON header (8-byte length, then the header): kilobytes, not gigabytes."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                return None
            return hashlib.sha256(handle.read(length)).hexdigest()
    except (OSError, struct.error):
        return None


def _hub_revision(repo_id: str, revision: Any = None) -> dict[str, Any] | None:
    """The cached commit of ``repo_id`` and its snapshot's file names; no network."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    cache = Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / (str(revision) if revision else "main")
    try:
        commit = ref.read_text().strip()
    except OSError:
        return {"revision": str(revision) if revision else None, "cached": repo.is_dir()}
    snapshot = repo / "snapshots" / commit
    files = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    return {"revision": commit, "files": files[:MAX_FILES]}


def differences(recorded: Any, current: Any, path: str = "") -> list[str]:
    """The dotted fields where two fingerprints differ, with both values."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        found = []
        for key in [*recorded, *(k for k in current if k not in recorded)]:
            where = f"{path}.{key}" if path else str(key)
            found += differences(recorded.get(key), current.get(key), where)
        return found
    return [] if recorded == current else [f"{path} (was {recorded!r}, now {current!r})"]


def check_same(recorded: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume a run whose fingerprint changed, naming the changed fields."""
    changed = differences(recorded, current)
    if changed:
        shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise ConfigError(
            "resume", f"the run in {run_dir} was started with a different setup: {shown}. "
            f"Resuming would mix two runs; start it again with --overwrite instead"
        )
