"""The plugin manager: built-ins from DEFAULT_PLUGINS, third parties from entry points.

Nothing happens at import time: :func:`get_plugin_manager` builds a fresh manager on every
call, so tests and long-lived processes start clean.
"""

from __future__ import annotations

import difflib
import importlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from noisesearch import hookspecs
from noisesearch.errors import NoiseSearchError
from noisesearch.hookspecs import PROJECT_NAME
from noisesearch.registry import Registry

#: Built-in plugins, written exactly like third-party ones; they load even when
#: ``NOISESEARCH_LOAD_PLUGINS`` disables every external plugin.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "noisesearch_builtin.models.digits",
    "noisesearch_builtin.models.diffusers.plugin",
    "noisesearch_builtin.verifiers.digits_classifiers",
    "noisesearch_builtin.verifiers.clip_score",
    "noisesearch_builtin.verifiers.clip_zeroshot",
    "noisesearch_builtin.verifiers.aesthetic",
    "noisesearch_builtin.verifiers.consistency",
    "noisesearch_builtin.verifiers.ensemble",
    "noisesearch_builtin.verifiers.dino",
    "noisesearch_builtin.verifiers.classifier",
    "noisesearch_builtin.verifiers.shapes_judge",
    "noisesearch_builtin.search.random_search",
    "noisesearch_builtin.search.zero_order",
    "noisesearch_builtin.search.paths",
    "noisesearch_builtin.search.smc",
    "noisesearch_builtin.search.pruning",
    "noisesearch_builtin.search.stochastic",
    "noisesearch_builtin.search.gradient",
    "noisesearch_builtin.search.evolution",
    "noisesearch_builtin.executors.ray_executor",
)

#: Which external plugins load: unset = all installed; empty = none;
#: a comma-separated list = only those (entry-point or distribution names).
LOAD_PLUGINS_ENV = "NOISESEARCH_LOAD_PLUGINS"

_REGISTER_HOOKS = {
    "model": "register_models",
    "verifier": "register_verifiers",
    "strategy": "register_search_strategies",
}


class PluginLoadWarning(UserWarning):
    """A third-party plugin failed to load (an import error, a misspelt hook, a hook that
    raised) and was skipped; the rest keeps working."""


class PluginError(NoiseSearchError):
    """A plugin breaks the hook contract (a misspelt hook, a wrong argument name)."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    hooks: tuple[str, ...]
    builtin: bool
    distribution: str | None
    version: str | None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "hooks": list(self.hooks)}
        if self.distribution:
            data["distribution"] = self.distribution
            data["version"] = self.version
        if self.builtin:
            data["builtin"] = True
        return data


def get_plugin_manager(load_entrypoints: bool | Sequence[str] | None = None) -> pluggy.PluginManager:
    """Build a plugin manager with the built-ins and the selected third-party plugins.

    :param load_entrypoints: ``True`` loads every installed plugin, ``False`` none, a list
        only those names; ``None`` (the default) reads ``NOISESEARCH_LOAD_PLUGINS``.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        _register(pm, module, module_name)
    selection = _selection(load_entrypoints)
    if selection is not False:
        _load_entrypoints(pm, selection, LOAD_PLUGINS_ENV if load_entrypoints is None else "load_entrypoints")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(_describe_validation_error(exc, pm.get_name(exc.plugin))) from None
    return pm


def _selection(load_entrypoints: bool | Sequence[str] | None) -> bool | set[str]:
    if load_entrypoints is None:
        raw = os.environ.get(LOAD_PLUGINS_ENV)
        if raw is None:
            return True
        names = {part.strip() for part in raw.split(",") if part.strip()}
        return names or False
    if isinstance(load_entrypoints, bool):
        return load_entrypoints
    return set(load_entrypoints)


def _load_entrypoints(pm: pluggy.PluginManager, selection: bool | set[str], source: str) -> None:
    entry_points = metadata.entry_points(group=PROJECT_NAME)
    if selection is not True:
        _warn_unmatched(selection, entry_points, source)
    # In the order of their names, whatever the order of sys.path and of the folders on it: of two
    # plugins that register the same name, the later one is skipped (build_registries). A stable
    # sort, so that of one name seen twice, the first on sys.path still wins.
    for ep in sorted(entry_points, key=lambda ep: ep.name):
        dist = ep.dist.name if ep.dist is not None else None
        if not _selected(ep, selection):
            continue
        if pm.get_plugin(ep.name) is not None:
            continue  # the same distribution seen twice on sys.path
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the CLI down
            warnings.warn(
                f"plugin {ep.name!r} (distribution {dist or 'unknown'!r}) failed to load and "
                f"was skipped: {type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        try:
            _register(pm, plugin, ep.name)
        except PluginError as exc:  # a misspelt hook or argument: skip it, as an import error
            reason = "it " + str(exc).removeprefix(f"plugin {ep.name!r} ")
            skip_plugin(pm, ep.name, reason, registered=False)
            continue
        _check_undecorated(pm, plugin, ep.name)


def _selected(ep: metadata.EntryPoint, selection: bool | set[str]) -> bool:
    return selection is True or ep.name in selection or (
        ep.dist is not None and ep.dist.name in selection
    )


def _check_undecorated(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """A plugin whose ``register_*`` functions lack ``@hookimpl`` would silently do nothing.

    One that implements no hook at all is skipped with a warning naming such functions; one that
    implements some hooks gets a warning for each function named exactly like another hook."""
    implemented = {caller.name for caller in pm.get_hookcallers(plugin) or []}
    lookalikes = sorted(
        attribute for attribute in dir(plugin)
        if attribute.startswith("register_") and attribute not in implemented
        and callable(getattr(plugin, attribute, None))
    )
    if not implemented:
        if lookalikes:
            it, them = ("it", "is") if len(lookalikes) == 1 else ("them", "are")
            reason = (
                f"it implements no noisesearch hook: {', '.join(lookalikes)} {them} not "
                f"decorated, so noisesearch never calls {it}; decorate {it} with "
                f"@noisesearch.hookimpl."
            )
        else:
            reason = (
                "it implements no noisesearch hook: its entry point should name the module "
                "whose functions are decorated with @noisesearch.hookimpl. Known hooks: "
                f"{', '.join(_hook_names())}."
            )
        skip_plugin(pm, name, reason)
        return
    for function in (attribute for attribute in lookalikes if attribute in _hook_names()):
        warnings.warn(
            f"plugin {name!r} (distribution {distribution_of(name)!r}) defines {function} "
            f"without @noisesearch.hookimpl, so noisesearch never calls it; decorate it with "
            f"@noisesearch.hookimpl (or rename it if it is no hook).",
            PluginLoadWarning,
            stacklevel=4,
        )


def left_out_plugins(pm: pluggy.PluginManager, load_entrypoints: bool | Sequence[str] | None = None
                     ) -> tuple[list[str], list[str]]:
    """The installed entry-point plugins that ``pm`` lacks, as two sorted lists of names: those
    that the selection (``NOISESEARCH_LOAD_PLUGINS`` by default) leaves out, and those that were
    selected but skipped (they failed to load or broke the hook contract, with a warning)."""
    selection = _selection(load_entrypoints)
    left_out, skipped = set(), set()
    for ep in metadata.entry_points(group=PROJECT_NAME):
        if pm.get_plugin(ep.name) is None:
            (skipped if selection is not False and _selected(ep, selection) else left_out).add(ep.name)
    return sorted(left_out), sorted(skipped - left_out)


def _warn_unmatched(selection: set[str], entry_points: Sequence[metadata.EntryPoint], source: str) -> None:
    """A selected name that is no installed plugin (a typo in ``NOISESEARCH_LOAD_PLUGINS``) would
    otherwise only show later, as an unknown verifier or model that points away from the cause."""
    installed = {ep.name for ep in entry_points}
    installed |= {ep.dist.name for ep in entry_points if ep.dist is not None}
    for name in sorted(selection - installed):
        close = difflib.get_close_matches(name, sorted(installed), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        warnings.warn(
            f"{source} names {name!r}, which is no installed plugin{hint}; installed: "
            f"{', '.join(sorted(installed)) or 'none'}",
            PluginLoadWarning,
            stacklevel=4,
        )


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        if pm.get_plugin(name) is not None:  # pluggy < 1.7 leaves a plugin it refused registered
            pm.unregister(name=name)
        raise PluginError(_describe_validation_error(exc, name)) from None
    unknown = [caller.name for caller in pm.get_hookcallers(plugin) or [] if not caller.has_spec()]
    if unknown:
        pm.unregister(plugin)
        close = difflib.get_close_matches(unknown[0], _hook_names(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PluginError(
            f"plugin {name!r} implements {unknown[0]!r}, which is not a noisesearch hook{hint}. "
            f"Known hooks: {', '.join(_hook_names())}."
        )


def _hook_names() -> list[str]:
    return [hook for hook in dir(hookspecs) if hook.startswith("register_")]


def distribution_of(plugin_name: str) -> str:
    """The distribution that installed an entry-point plugin, for messages."""
    for ep in metadata.entry_points(group=PROJECT_NAME):
        if ep.name == plugin_name and ep.dist is not None:
            return ep.dist.name
    return "unknown"


def skip_plugin(pm: pluggy.PluginManager, name: str, reason: str, registered: bool = True) -> None:
    """Warn that a third-party plugin is skipped (as one that fails to import is), and drop it
    from ``pm`` so that nothing else of it runs."""
    if registered and pm.get_plugin(name) is not None:
        pm.unregister(name=name)
    warnings.warn(
        f"plugin {name!r} (distribution {distribution_of(name)!r}) was skipped: {reason} "
        f"Fix or uninstall it, or choose the plugins to load with {LOAD_PLUGINS_ENV}=NAME,...",
        PluginLoadWarning,
        stacklevel=3,
    )


def _describe_validation_error(exc: pluggy.PluginValidationError, name: str | None) -> str:
    hooks = ", ".join(_hook_names())
    return f"plugin {name or exc.plugin!r} breaks the hook contract: {exc}. Known hooks: {hooks}."


@dataclass
class Registries:
    """Every registered model, verifier and strategy of one plugin manager."""

    models: Registry
    verifiers: Registry
    strategies: Registry

    def of(self, kind: str) -> Registry:
        return {"model": self.models, "verifier": self.verifiers, "strategy": self.strategies}[
            kind
        ]


_builds = 0


def registries_built() -> int:
    """How many times registries were built in this process: a cache of what the installed
    plugins are (their distributions: ``noisesearch.fingerprint``) keys on it, since a plugin may
    be installed or upgraded in a running process and the registries built again."""
    return _builds


def call_hookimpl(impl: Any, **arguments: Any) -> Any:
    """Call one hook implementation with only the arguments it names, as pluggy does: an
    implementation may take fewer arguments than its specification."""
    return impl.function(*[arguments[name] for name in impl.argnames])


def build_registries(pm: pluggy.PluginManager | None = None) -> Registries:
    """Call the ``register_*`` hooks of every plugin, recording which plugin owns each name.

    A third-party plugin whose hook raises, or registers a bad name or factory, or a name that
    another plugin has, is skipped whole, with a :class:`PluginLoadWarning`, and the rest work.
    Of two plugins that register the same name of a kind, a built-in one is kept, else the one
    loaded first (entry points load in the order of their names). Two built-ins that clash are
    a :class:`~noisesearch.errors.DuplicateNameError`.
    """
    global _builds
    _builds += 1  # what was found out about the installed plugins is found out again
    pm = pm or get_plugin_manager()
    # Each plugin registers into registries of its own first, so that one that fails halfway
    # leaves nothing behind.
    staged: dict[str, list[Registry]] = {}
    for kind, hook_name in _REGISTER_HOOKS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            plugin = impl.plugin_name
            own = Registry(kind)
            try:
                call_hookimpl(impl, register=own.bind(plugin))
            except Exception as exc:
                if plugin in DEFAULT_PLUGINS:
                    raise
                skip_plugin(pm, plugin, f"its {hook_name} hook raised {type(exc).__name__}: {exc}.")
                staged.pop(plugin, None)
                continue
            staged.setdefault(plugin, []).append(own)
    registries = Registries(Registry("model"), Registry("verifier"), Registry("strategy"))
    order = [name for name, _ in pm.list_name_plugin()]  # the order they were registered in
    for plugin in sorted(staged, key=lambda name: (name not in DEFAULT_PLUGINS, order.index(name))):
        clashes = [
            (own.kind, entry.name, registries.of(own.kind).get(entry.name).plugin)
            for own in staged[plugin] for entry in own if entry.name in registries.of(own.kind)
        ]
        if clashes and plugin not in DEFAULT_PLUGINS:
            skip_plugin(pm, plugin, _describe_clashes(clashes))
            continue
        for own in staged[plugin]:
            for entry in own:  # two built-ins that clash: a DuplicateNameError
                registries.of(own.kind).add(entry.name, entry.factory, plugin, entry.description)
    return registries


def _describe_clashes(clashes: list[tuple[str, str, str]]) -> str:
    """Why a plugin is skipped: the names it registers that plugins kept before it have."""
    parts = []
    for kind, name, owner in clashes:
        if owner in DEFAULT_PLUGINS:
            parts.append(f"{kind} {name!r} is already registered by the built-in plugin {owner!r}")
        else:
            parts.append(
                f"{kind} {name!r} is already registered by plugin {owner!r} (distribution "
                f"{distribution_of(owner)!r}), which loads before it"
            )
    return (
        f"it registers a name that another plugin has: its {'; its '.join(parts)}. A name must be "
        f"unique per kind; prefix a plugin's names with its package's name."
    )


def plugin_infos(pm: pluggy.PluginManager, include_builtin: bool = False) -> list[PluginInfo]:
    """What ``noisesearch plugins`` prints: each plugin, its hooks and its distribution."""
    dists = {
        ep.name: (ep.dist.name, ep.dist.version)
        for ep in metadata.entry_points(group=PROJECT_NAME)
        if ep.dist is not None
    }
    infos = []
    for name, plugin in pm.list_name_plugin():
        builtin = name in DEFAULT_PLUGINS
        if builtin and not include_builtin:
            continue
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))
        dist, version = (None, None) if builtin else dists.get(name, (None, None))
        infos.append(PluginInfo(name, hooks, builtin, dist, version))
    return sorted(infos, key=lambda info: (not info.builtin, info.name))
