"""Reading a diffusers pipeline's JSON files before anything is loaded.

``--model hf:<id-or-folder>`` must say what the pipeline is (prompt or label model, how many
classes) while the run is still being planned, so that a bad combination fails in a second with
a clear message instead of after minutes of loading weights. Only small JSON files are read here:
``model_index.json`` (the pipeline class) and, for DiT, ``transformer/config.json`` (the number
of classes). No torch, no diffusers.

Where a path points: an existing local folder is read directly; a string that looks like a path
(``./x``, ``/x``, ``~/x``, ``a/b/c``) but does not exist is a missing folder; anything else is a
Hugging Face hub id (``owner/name``), read through ``huggingface_hub.hf_hub_download``, which
honours ``HF_HUB_OFFLINE``, ``HF_HOME`` and the local cache exactly as diffusers'
``from_pretrained`` does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from noisesearch.errors import ConfigError
from noisesearch.weights import hub_unreachable

#: ``owner/name`` or ``name``, as the hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FIELD = "path"


def is_local(path: str) -> bool:
    """Whether ``path`` means a folder on this machine rather than a hub id."""
    if Path(path).expanduser().exists():
        return True
    return _HUB_ID.match(path) is None


def read_json(path: str, filename: str, required: bool = True) -> dict[str, Any] | None:
    """``filename`` (relative to the pipeline root) of a local folder or hub repository.

    :param required: raise a :class:`ConfigError` if the file is missing; otherwise return ``None``.
    """
    if is_local(path):
        folder = Path(path).expanduser()
        if not folder.exists():
            raise ConfigError(_FIELD, f"local folder {path!r} does not exist")
        if not folder.is_dir():
            raise ConfigError(_FIELD, f"{path!r} is a file; give a pipeline folder or a hub id")
        file = folder / filename
        if not file.is_file():
            if not required:
                return None
            raise ConfigError(
                _FIELD,
                f"{path!r} has no {filename}: not a diffusers pipeline folder "
                f"(write one with pipeline.save_pretrained(folder))",
            )
        return _parse(file, path)
    return _read_hub_json(path, filename, required)


def _read_hub_json(repo_id: str, filename: str, required: bool) -> dict[str, Any] | None:
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import RemoteEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with diffusers
        raise ConfigError(_FIELD, f"reading hub id {repo_id!r} needs huggingface_hub: {exc}") from None
    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):  # in the local cache: no network needed to plan
        return _parse(Path(cached), repo_id)
    unreachable = hub_unreachable()
    if unreachable:  # fail in seconds, not after huggingface_hub's ~30 s of retries
        if not required:
            return None
        raise ConfigError(
            _FIELD,
            f"{repo_id!r} is not a local folder, its {filename} is not in the local hub cache, and "
            f"the hub cannot be reached ({unreachable}). Download it where there is a network "
            f"(`hf download {repo_id}`) and point HF_HOME at that cache (HF_HUB_OFFLINE=1 then "
            f"uses only the cache), or give a local folder.",
        )
    try:
        local = hf_hub_download(repo_id, filename)
    except RemoteEntryNotFoundError:  # the repository exists but lacks the file
        if not required:
            return None
        raise ConfigError(
            _FIELD, f"hub repository {repo_id!r} has no {filename}: not a diffusers pipeline"
        ) from None
    except Exception as exc:  # offline and not cached, unknown repo, gated repo, no network
        if not required:
            return None
        raise ConfigError(
            _FIELD,
            f"cannot read {filename} of {repo_id!r} ({type(exc).__name__}: {_first_line(exc)}). "
            f"It is not a local folder here; as a hub id it must be reachable, or cached when "
            f"HF_HUB_OFFLINE=1 is set.",
        ) from None
    return _parse(Path(local), repo_id)


#: Weight files that are pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_local_weights(path: str, variant: str | None, use_safetensors: bool) -> None:
    """Before loading a local pipeline folder: every component with weights has them in the
    requested ``variant``, and as safetensors unless ``use_safetensors`` is false."""
    folder = Path(path).expanduser()
    index = read_json(path, "model_index.json") or {}
    for component, spec in index.items():
        if component.startswith("_") or not isinstance(spec, list) or None in spec:
            continue
        sub = folder / component
        if not sub.is_dir():
            continue
        names = [file.name for file in sub.iterdir() if file.is_file()]
        safe = [name for name in names if name.endswith(".safetensors")]
        pickled = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
        if not safe and not pickled:
            continue  # a tokenizer, a scheduler: no weights
        if variant:
            safe = [name for name in safe if f".{variant}." in name]
            pickled = [name for name in pickled if f".{variant}." in name]
            if not safe and not pickled:
                raise ConfigError(
                    "variant", f"{path!r} has no {variant!r} weights in {component}/ (files named "
                    f"*.{variant}.safetensors); leave out variant to load the default weights",
                )
        if use_safetensors and not safe:
            raise ConfigError(
                "use_safetensors",
                f"{path!r}: {component}/ has only pickled weights ({pickled[0]}), which can run "
                f"code when loaded. Convert them to safetensors (pipeline.save_pretrained(folder) "
                f"writes safetensors), or, only if you trust them, pass "
                f"--model-opt use_safetensors=false.",
            )


def _parse(file: Path, path: str) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(_FIELD, f"cannot read {file.name} of {path!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(_FIELD, f"{file.name} of {path!r} is not a JSON object")
    return data


def pipeline_class_name(path: str) -> str:
    """The ``_class_name`` of ``model_index.json``: which diffusers pipeline ``path`` holds."""
    index = read_json(path, "model_index.json")
    assert index is not None
    name = index.get("_class_name")
    if not isinstance(name, str):
        raise ConfigError(_FIELD, f"model_index.json of {path!r} names no pipeline class (_class_name)")
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""
