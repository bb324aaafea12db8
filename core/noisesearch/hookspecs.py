"""Hook specifications: the whole contract between the core and its plugins.

Every hook collects the answers of every plugin (none is ``firstresult``). The three
``register_*`` hooks hand a ``register`` callable to the plugin; the plugin calls it once per
implementation. Register *factories* (classes or callables), never instances: listing plugins
must not import torch or load weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from noisesearch.registry import Register

#: The project name: the pluggy marker name and the entry-point group of third-party plugins.
PROJECT_NAME = "noisesearch"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_models(register: Register) -> None:
    """Register model factories.

    Called once each time a registry is built (``noisesearch models``, ``noisesearch run``,
    :func:`noisesearch.search`), after every plugin has been loaded.

    :param register: call ``register(name, factory, description=None)`` once per model.
        ``name`` is what users type (``--model NAME``); ``factory`` is a class or callable
        whose keyword arguments are the model's options and which returns an object
        following :class:`noisesearch.types.Model`; ``description`` defaults to the first
        line of the factory's docstring. The factory is only called when a run uses it.
    """


@hookspec
def register_verifiers(register: Register) -> None:
    """Register verifier factories.

    Called once each time a registry is built, after every plugin has been loaded.

    :param register: call ``register(name, factory, description=None)`` once per verifier.
        ``factory(**options)`` must return an object following
        :class:`noisesearch.types.Verifier`. Loading weights belongs in the factory (or
        later), never at import time of the plugin module.
    """


@hookspec
def register_search_strategies(register: Register) -> None:
    """Register search-strategy factories.

    Called once each time a registry is built, after every plugin has been loaded.

    :param register: call ``register(name, factory, description=None)`` once per strategy.
        ``factory(**options)`` must return an object following
        :class:`noisesearch.types.SearchStrategy`.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add commands to the ``noisesearch`` command-line interface.

    Called once when the CLI application is built, before arguments are parsed.

    :param app: the root :class:`typer.Typer` application; add commands with
        ``@app.command()`` or sub-applications with ``app.add_typer(...)``.
    """


@hookspec
def register_executors(register: Register) -> None:
    """Register bench executors (``noisesearch bench --executor NAME``).

    Called when a bench picks its executor. The local in-process executor is the core's own;
    others (the Ray executor, ``noisesearch[ray]``) come from plugins.

    :param register: call ``register(name, factory)`` once per executor. ``factory(**options)``
        returns an object with ``run(cells, on_row)`` and ``close()``
        (:class:`noisesearch.bench.executors.Executor`). Import heavy or optional packages
        inside the factory, and raise :class:`noisesearch.errors.ConfigError` naming the
        extra to install when one is missing.
    """
