"""The executor seam: what runs a bench's cells. ``local`` (in this process, cells in order,
each model built once) is the core's; other executors are plugins (``register_executors``),
such as the Ray executor of ``noisesearch[ray]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from noisesearch.bench.cells import Cell, CellRunner
from noisesearch.errors import ConfigError

OnRow = Callable[[dict[str, Any]], None]


class Executor(Protocol):
    """Runs cells and hands each finished cell's row to ``on_row`` (in the driver process,
    in any order; the bench writes and orders the rows). A cell's run folder is written where
    its ``config["output"]`` says, so remote workers need the bench folder on a shared path."""

    def run(self, cells: Sequence[Cell], on_row: OnRow) -> None: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Cells in order in this process; one :class:`CellRunner` builds each model once."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.runner: CellRunner | None = None

    def run(self, cells: Sequence[Cell], on_row: OnRow) -> None:
        self.runner = self.runner or CellRunner(self.threads)
        for cell in cells:
            on_row(self.runner.run(cell))

    def close(self) -> None:
        self.runner = None


def executor_factories(pm: Any = None) -> dict[str, Callable[..., Any]]:
    """``local`` plus every executor that a plugin registers."""
    from noisesearch.plugins import get_plugin_manager

    factories: dict[str, Callable[..., Any]] = {"local": LocalExecutor}
    pm = pm or get_plugin_manager()

    def register(name: str, factory: Callable[..., Any]) -> None:
        factories.setdefault(name, factory)

    pm.hook.register_executors(register=register)
    return factories


def make_executor(name: str, options: dict[str, Any], pm: Any = None) -> Any:
    """The executor ``name`` built with ``options``. The local executor takes ``threads`` (the
    grid's) only: another option given to it (``--workers``, ``--address``) is refused, never
    silently dropped; so is an option that an executor does not take."""
    import inspect

    factories = executor_factories(pm)
    if name not in factories:
        raise ConfigError("executor", f"unknown executor {name!r}; available: {', '.join(factories)}")
    if name == "local":
        for option, value in options.items():
            if option != "threads" and value is not None:
                flag = "--" + option.replace("_", "-")
                raise ConfigError(option, f"only with --executor ray ({flag} means nothing to the "
                                  "local executor, which runs the cells in this process)")
        options = {"threads": options.get("threads")}
    try:
        inspect.signature(factories[name]).bind(**options)
    except TypeError as exc:
        raise ConfigError("executor_options", f"{name}: {exc}") from None
    except ValueError:  # no signature to read (a builtin): let the call say
        pass
    return factories[name](**options)
