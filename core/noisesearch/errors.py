"""Errors a user can act on: each names the thing, the bad value and what would be accepted."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


class NoiseSearchError(Exception):
    """Base class: the CLI prints these as one message and exits with code 2, no traceback."""


class ConfigError(NoiseSearchError, ValueError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class UnknownNameError(NoiseSearchError, KeyError):
    """A model, verifier or strategy name that no loaded plugin registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        close = difflib.get_close_matches(name, self.available, n=3, cutoff=0.5)
        parts = [f"unknown {kind} {name!r}."]
        if close:
            parts.append(f"Did you mean: {', '.join(close)}?")
        listed = ", ".join(self.available) if self.available else "(none)"
        plural = {"strategy": "strategies"}.get(kind, f"{kind}s")
        parts.append(f"Available {plural}: {listed}.")
        # Third-party plugins left out by the variable (noisesearch.plugins.LOAD_PLUGINS_ENV,
        # not imported: the plugins module imports this one) would otherwise go unmentioned.
        selected = os.environ.get("NOISESEARCH_LOAD_PLUGINS")
        note = "" if selected is None else f" (NOISESEARCH_LOAD_PLUGINS is set to {selected!r})"
        parts.append(f"Run `noisesearch plugins` to see which plugins are loaded{note}.")
        super().__init__(" ".join(parts))

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DuplicateNameError(NoiseSearchError):
    """Two plugins registered the same name for the same kind."""

    def __init__(self, kind: str, name: str, first_plugin: str, second_plugin: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(
            f"{kind} {name!r} is registered twice: by plugin {first_plugin!r} and by plugin "
            f"{second_plugin!r}. Uninstall one of them or disable it with NOISESEARCH_LOAD_PLUGINS."
        )


class IncompatibleError(NoiseSearchError):
    """A combination that cannot work (a prompt verifier on a class-conditional model, ...).

    Raised before any weights are loaded or any compute is spent.
    """


class BudgetExhausted(NoiseSearchError):
    """A strategy asked for more compute than the budget has left.

    Strategies normally check `SearchContext.remaining_nfe` first; the engine raises this
    instead of ever exceeding the budget.
    """


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run whose folder exists: ``run_dir`` is where to resume it. A
    ``KeyboardInterrupt``, so that code catching Ctrl-C keeps working."""

    def __init__(self, run_dir: object) -> None:
        self.run_dir = run_dir
        super().__init__(f"interrupted; resume with `noisesearch run --resume {run_dir}`")
