"""LoRA adapters (``--model-opt lora=PATH[:SCALE]``, repeatable), loaded by diffusers itself.

Each adapter goes through the pipeline's own ``load_lora_weights`` (safetensors only) under the
name ``lora0``, ``lora1``, ...; ``set_adapters`` then sets every adapter's scale (default 1). This is
exactly what a diffusers user writes, so our N=1 equals their pipeline with the same adapters.
diffusers needs ``peft`` for it (a dependency of noisesearch).

``PATH`` is a ``.safetensors`` file, a folder holding ``pytorch_lora_weights.safetensors``, or a hub
id. A local path that does not exist is refused while planning, before any weights load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisesearch.errors import ConfigError


@dataclass(frozen=True)
class LoraSpec:
    """One adapter: where it is and its scale."""

    path: str
    scale: float = 1.0


def parse(option: str | list[str] | tuple[str, ...] | None) -> list[LoraSpec]:
    """``"PATH[:SCALE]"`` or a list of them (the CLI gives a list when the option repeats)."""
    if option is None:
        return []
    entries = [option] if isinstance(option, str) else list(option)
    specs = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError("lora", f"expected PATH[:SCALE] (or a list of them), got {entry!r}")
        path, sep, tail = entry.strip().rpartition(":")
        scale = 1.0
        if sep and path:
            try:
                scale = float(tail)
            except ValueError:
                path = entry.strip()  # a colon that is part of the path
        else:
            path = entry.strip()
        specs.append(LoraSpec(path, scale))
    return specs


def looks_local(path: str) -> bool:
    """A file or folder path rather than a hub id (``owner/name``)."""
    return (path.startswith((".", "/", "~")) or path.endswith(".safetensors") or path.count("/") != 1
            or Path(path).expanduser().exists())


def check(specs: list[LoraSpec], pipeline_class: str) -> None:
    """Before loading: the family's pipeline takes LoRAs, and local files exist (safetensors)."""
    if not specs:
        return
    import diffusers

    cls = getattr(diffusers, pipeline_class, None)
    if cls is not None and not hasattr(cls, "load_lora_weights"):
        raise ConfigError("lora", f"diffusers' {pipeline_class} has no LoRA loader")
    for spec in specs:
        if not looks_local(spec.path):
            continue
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise ConfigError("lora", f"no LoRA file or folder at {spec.path!r}")
        if path.is_file() and path.suffix != ".safetensors":
            raise ConfigError("lora", f"{spec.path!r} is not a .safetensors file (pickled LoRA "
                              f"weights can run code when loaded and are not loaded)")


def load(pipe: Any, specs: list[LoraSpec]) -> None:
    """Load every adapter into ``pipe`` with diffusers' own loader and set their scales."""
    if not specs:
        return
    names = []
    for i, spec in enumerate(specs):
        name = f"lora{i}"
        path = Path(spec.path).expanduser()
        kwargs: dict[str, Any] = {"adapter_name": name, "use_safetensors": True}
        where: str = spec.path
        if path.is_file():
            where, kwargs["weight_name"] = str(path.parent), path.name
        try:
            pipe.load_lora_weights(where, **kwargs)
        except Exception as exc:  # another base architecture, a damaged file, no network
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError("lora", f"cannot load the LoRA {spec.path!r} into this pipeline: "
                              f"{type(exc).__name__}: {first}") from None
        present = {n for adapters in pipe.get_list_adapters().values() for n in adapters}
        if name not in present:  # diffusers only warns when no key matches a layer
            raise ConfigError("lora", f"the LoRA {spec.path!r} matches no layer of this pipeline; "
                              f"is it for another base model?")
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[spec.scale for spec in specs])
