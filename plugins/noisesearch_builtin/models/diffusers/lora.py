"""LoRA adapters (``--model-opt lora=PATH[:SCALE]``, repeatable), loaded by diffusers itself.

Each adapter goes through the pipeline's own ``load_lora_weights`` (safetensors only) under the
name ``noisesearch_lora0``, ``noisesearch_lora1``, ...; ``set_adapters`` then sets every adapter's
scale (default 1). This is exactly what a diffusers user writes, so our N=1 equals their pipeline
with the same adapters. diffusers needs ``peft`` for it (a dependency of noisesearch).

A pipeline the user gave (``search(model=pipe)``, :func:`load_onto`) keeps the adapters the user
made active, with their scales, next to ours (a layer computes the user's and then ours), and gets
back exactly its adapter state when the model that wraps it is closed or dropped: ours deleted,
every LoRA layer's active adapters, scales and on/off switch as they were, the layers only ours
had unwrapped again.

``PATH`` is a ``.safetensors`` file, a folder holding ``pytorch_lora_weights.safetensors``, or a hub
id. A local path that does not exist is refused while planning, before any weights load.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisesearch.errors import ConfigError
from noisesearch_builtin.quiet import verbose

#: Our adapters' names: ``noisesearch_lora0``, ... (a suffix where the user has one of that name).
NAME_PREFIX = "noisesearch_lora"


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


def load(pipe: Any, specs: list[LoraSpec], quiet: bool = True) -> list[str]:
    """Load every adapter into ``pipe`` with diffusers' own loader and set their scales (and only
    theirs: the pipeline's other adapters are switched off). Returns the adapters' names.
    ``quiet``: without diffusers' and peft's warnings about it (not with ``--verbose``)."""
    if not specs:
        return []
    with quiet_warnings(quiet):
        names = _load_each(pipe, specs)
        pipe.set_adapters(names, adapter_weights=[spec.scale for spec in specs])
    return names


def load_onto(
    pipe: Any, specs: list[LoraSpec], owner: object, quiet: bool = True
) -> Callable[[], None] | None:
    """Load the adapters into a pipeline the user gave, next to the user's active ones, until
    ``owner`` (the model wrapping ``pipe``) is closed or dropped. Returns what puts the pipeline's
    adapters back as they were, or None without adapters: a ``weakref.finalize`` of ``owner``,
    which runs once, when called or when ``owner`` goes (at once when ``search(model=pipe)``
    returns; after a failed search, when Python collects the error's traceback, which holds it).

    First puts back what an earlier owner of ``pipe`` still holds (that failed search's model, one
    the user keeps), with or without adapters of its own: that owner's :func:`check_applied` then
    refuses it. Refused: LoRA layers fused into the weights (they compute no other adapter)."""
    earlier = _applied.pop(pipe, None)
    if earlier is not None:
        earlier()
    if not specs:
        return None
    state = _AdapterState.of(pipe)
    if state.fused:
        raise ConfigError("lora", "this pipeline has LoRA layers fused into its weights (fuse_lora), "
                          "which compute no other adapter: call pipe.unfuse_lora() first, or load the "
                          "LoRA yourself (pipe.load_lora_weights(...), pipe.set_adapters(...))")
    with quiet_warnings(quiet):
        try:
            names = _load_each(pipe, specs, taken=state.names)
            pipe.set_adapters(names, adapter_weights=[spec.scale for spec in specs])
            state.activate_with(names)
        except BaseException:
            state.restore(pipe, _present(pipe) - state.names)
            raise
    restore = weakref.finalize(owner, state.restore, pipe, set(names))
    restore.atexit = False  # an exiting process need not tidy a pipeline
    _applied[pipe] = restore
    return restore


def check_applied(restore: Callable[[], None] | None) -> None:
    """Refuse a model whose adapters were taken out of its pipeline (:func:`load_onto`)."""
    if isinstance(restore, weakref.finalize) and not restore.alive:
        raise ConfigError("lora", "this model's LoRAs were taken out of its pipeline (it was closed, or "
                          "the pipeline was wrapped again since): wrap the pipeline again")


@contextmanager
def quiet_warnings(quiet: bool = True) -> Iterator[None]:
    """Without diffusers', transformers' and peft's Python warnings inside the block (their
    logging is ``noisesearch_builtin.quiet.quiet_loading``'s); never quiet with ``--verbose``."""
    if not quiet or verbose():
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(peft|diffusers|transformers)(\.|$)")
        yield


#: A network's peft bookkeeping (instance attributes; absent on a network that never had a LoRA).
_BOOKKEEPING = ("peft_config", "_hf_peft_config_loaded")
#: Pipelines the user gave -> what puts back the adapters a model loaded into them.
_applied: weakref.WeakKeyDictionary[Any, weakref.finalize] = weakref.WeakKeyDictionary()


def _load_each(pipe: Any, specs: list[LoraSpec], taken: Collection[str] = ()) -> list[str]:
    names: list[str] = []
    for i, spec in enumerate(specs):
        name = f"{NAME_PREFIX}{i}"
        suffix = 0
        while name in taken:  # the user's
            suffix += 1
            name = f"{NAME_PREFIX}{i}_{suffix}"
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
        if name not in _present(pipe):  # diffusers only warns when no key matches a layer
            raise ConfigError("lora", f"the LoRA {spec.path!r} matches no layer of this pipeline; "
                              f"is it for another base model?")
        names.append(name)
    return names


def _present(pipe: Any) -> set[str]:
    """Every adapter loaded in ``pipe``, in any of its components."""
    return {name for adapters in pipe.get_list_adapters().values() for name in adapters}


def _tuner_layers(pipe: Any) -> Iterator[tuple[Any, str, Any]]:
    """``(component, name, layer)`` for every peft layer of the pipeline's networks."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for name, module in component.named_modules():
                if isinstance(module, BaseTunerLayer):
                    yield component, name, module


@dataclass
class _LayerState:
    layer: Any
    active: list[str]
    disabled: bool
    scaling: dict[str, Any]
    requires_grad: list[tuple[Any, bool]]


@dataclass
class _AdapterState:
    """A pipeline's adapters as the user left them: each LoRA layer's active adapters, scales and
    switch, and what each network holds of peft's bookkeeping."""

    names: set[str]
    layers: list[_LayerState]
    #: network -> its ``peft_config`` and ``_hf_peft_config_loaded`` as instance attributes (or absent)
    components: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)

    @classmethod
    def of(cls, pipe: Any) -> _AdapterState:
        import torch

        layers = [
            _LayerState(layer, list(layer.active_adapters), bool(layer.disable_adapters),
                        dict(getattr(layer, "scaling", {})),
                        [(p, p.requires_grad) for n, p in layer.named_parameters()
                         if not n.startswith("base_layer")])
            for _, _, layer in _tuner_layers(pipe)
        ]
        components = [
            (module, {key: module.__dict__[key] for key in _BOOKKEEPING if key in module.__dict__})
            for module in pipe.components.values() if isinstance(module, torch.nn.Module)
        ]
        for _, saved in components:  # loading adds to the user's dict: keep its entries too
            if isinstance(saved.get("peft_config"), dict):
                saved["peft_config entries"] = dict(saved["peft_config"])
        return cls(_present(pipe), layers, components)

    @property
    def fused(self) -> bool:
        return any(state.layer.merged for state in self.layers)

    def activate_with(self, names: list[str]) -> None:
        """Each layer the user had on computes the user's active adapters and then ours; one the
        user had switched off (``disable_lora``) computes ours alone (``set_adapters`` has set
        ours, and ours only, active everywhere)."""
        for state in self.layers:
            layer = state.layer
            ours = [name for name in names if name in getattr(layer, "scaling", {})]
            if not ours:
                layer.set_adapter(state.active)
            elif state.disabled:
                layer.set_adapter(ours)
                layer.enable_adapters(True)
            else:
                layer.set_adapter([*state.active, *ours])

    def restore(self, pipe: Any, names: set[str]) -> None:
        """Delete the adapters ``names`` and put every layer and network back as recorded."""
        with warnings.catch_warnings():  # peft's "Adapter ... was active which is now deleted"
            warnings.simplefilter("ignore")
            if names:
                pipe.delete_adapters(sorted(names))
        known = {id(state.layer) for state in self.layers}
        for component, name, layer in list(_tuner_layers(pipe)):
            if id(layer) not in known:  # a layer only ours had: the plain layer again
                parent, _, child = name.rpartition(".")
                setattr(component.get_submodule(parent), child, layer.get_base_layer())
        for state in self.layers:
            layer = state.layer
            layer.set_adapter(state.active)
            if layer.disable_adapters != state.disabled:
                layer.enable_adapters(not state.disabled)
            if hasattr(layer, "scaling"):
                layer.scaling.clear()
                layer.scaling.update(state.scaling)
            for parameter, requires_grad in state.requires_grad:
                parameter.requires_grad_(requires_grad)
        for module, saved in self.components:
            for key in _BOOKKEEPING:
                if key in saved:
                    setattr(module, key, saved[key])
                elif key in module.__dict__:
                    delattr(module, key)
            if "peft_config entries" in saved:  # the user's own dict, with the user's entries
                module.peft_config.clear()
                module.peft_config.update(saved["peft_config entries"])

