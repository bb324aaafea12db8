"""The ``noisesearch`` command line: argument parsing and printing only.

Listing commands never import torch; ``run`` hands a :class:`RunConfig` to the API.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import typer

from noisesearch import __version__
from noisesearch.errors import ConfigError, NoiseSearchError
from noisesearch.plugins import build_registries, get_plugin_manager, plugin_infos

KIND_COMMANDS = {"models": "model", "verifiers": "verifier", "strategies": "strategy"}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can act on into one line and exit code 2, no traceback."""
    try:
        yield
    except NoiseSearchError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"noisesearch {__version__}")
        raise typer.Exit()


def _plugins_command(app: typer.Typer) -> None:
    @app.command()
    def plugins(
        all_: bool = typer.Option(False, "--all", help="Include the built-in plugins."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List installed plugins and the hooks they implement."""
        with user_errors():
            infos = plugin_infos(get_plugin_manager(), include_builtin=all_)
        if as_json:
            _print_json([info.to_json() for info in infos])
            return
        if not infos:
            typer.echo("No third-party plugins installed (use --all to see the built-ins).")
        for info in infos:
            where = f" ({info.distribution} {info.version})" if info.distribution else ""
            tag = " [built-in]" if info.builtin else ""
            typer.echo(f"{info.name}{where}{tag}: {', '.join(info.hooks)}")


def _kind_command(app: typer.Typer, command: str, kind: str) -> None:
    def listing(
        name: Optional[str] = typer.Argument(None, help=f"Show one {kind} in detail."),  # noqa: UP045
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        with user_errors():
            registry = build_registries().of(kind)
            if name is not None:
                entry = registry.get(name)
                detail = {**entry.to_json(), "parameters": [p.to_json() for p in entry.parameters()]}
                if as_json:
                    _print_json(detail)
                    return
                typer.echo(f"{entry.name} (plugin {entry.plugin})")
                typer.echo(f"  {entry.description}")
                prefix = f"{entry.name}." if kind == "verifier" else ""
                for param in entry.parameters():
                    default = "required" if param.required else f"default {param.default!r}"
                    typer.echo(f"  --{kind}-opt {prefix}{param.name}=...  ({default}) {param.help}")
                return
        if as_json:
            _print_json([entry.to_json() for entry in registry])
            return
        width = max((len(entry.name) for entry in registry), default=0)
        for entry in registry:
            typer.echo(f"{entry.name.ljust(width)}  {entry.description}  [{entry.plugin}]")

    listing.__doc__ = f"List the registered {command}, or show one with its parameters."
    app.command(command)(listing)


def _parse_options(pairs: list[str], field: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(field, f"expected KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def _parse_verifier_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in _parse_options(pairs, "--verifier-opt").items():
        name, dot, option = key.rpartition(".")
        if not dot or not name:
            raise ConfigError("--verifier-opt", f"expected VERIFIER.KEY=VALUE, got {key!r}")
        nested.setdefault(name, {})[option] = value
    return nested


def _run_command(app: typer.Typer) -> None:
    @app.command()
    def run(
        model: str = typer.Option("digits", help="Model name (see `noisesearch models`), or hf:<id-or-folder> for a diffusers pipeline."),  # noqa: E501
        label: Optional[str] = typer.Option(None, help="Class label, an index or a class name (class-conditional models); default: drawn from --seed."),  # noqa: E501, UP045
        prompt: Optional[str] = typer.Option(None, help="Text prompt (text-to-image models)."),  # noqa: UP045
        negative_prompt: Optional[str] = typer.Option(None, help="Negative prompt."),  # noqa: UP045
        strategy: str = typer.Option("random", help="Search strategy (see `noisesearch strategies`)."),  # noqa: E501
        verifier: Optional[list[str]] = typer.Option(None, help="Verifier; repeat for several (the first one is searched on). Default: the model's."),  # noqa: E501, UP045
        evaluator: Optional[str] = typer.Option(None, help="Independent judge for reports, or 'none'. Default: the model's."),  # noqa: E501, UP045
        candidates: Optional[int] = typer.Option(None, help="Budget in candidates (default 16 when no budget is given)."),  # noqa: E501, UP045
        budget_nfe: Optional[int] = typer.Option(None, help="Budget in denoiser evaluations, summed over candidates."),  # noqa: E501, UP045
        steps: Optional[int] = typer.Option(None, help="Solver steps per candidate (default: the model's)."),  # noqa: E501, UP045
        solver: str = typer.Option("ddim", help="ODE solver: ddim (Euler) or heun."),
        seed: int = typer.Option(0, help="Run seed: same seed, same candidates."),
        batch_size: Optional[int] = typer.Option(None, help="Candidates per batch (default: the model's)."),  # noqa: E501, UP045
        top_k: int = typer.Option(8, help="Best candidates kept with their images."),
        device: Optional[str] = typer.Option(None, help="torch device, e.g. cpu or cuda."),  # noqa: UP045
        output: Optional[str] = typer.Option(None, "--output", "-o", help="Run folder (default: noisesearch-runs/<time>-<model>-<condition>)."),  # noqa: E501, UP045
        model_opt: Optional[list[str]] = typer.Option(None, help="Model option KEY=VALUE."),  # noqa: UP045
        verifier_opt: Optional[list[str]] = typer.Option(None, help="Verifier option VERIFIER.KEY=VALUE."),  # noqa: E501, UP045
        strategy_opt: Optional[list[str]] = typer.Option(None, help="Strategy option KEY=VALUE."),  # noqa: UP045
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    ) -> None:
        """Search for better samples: generate candidates, score them, keep the best."""
        from noisesearch.api import plan, run_plan
        from noisesearch.config import RunConfig

        with user_errors():
            config = RunConfig(
                model=model, strategy=strategy, verifiers=verifier or None, evaluator=evaluator,
                prompt=prompt, negative_prompt=negative_prompt,
                label=int(label) if label is not None and label.strip().isdigit() else label,
                candidates=candidates, budget_nfe=budget_nfe, steps=steps, solver=solver,
                seed=seed, batch_size=batch_size, top_k=top_k, device=device, output=output,
                model_options=_parse_options(model_opt or [], "--model-opt"),
                verifier_options=_parse_verifier_options(verifier_opt or []),
                strategy_options=_parse_options(strategy_opt or [], "--strategy-opt"),
            )
            checked = plan(config)
            result = run_plan(checked, progress=not quiet and not as_json)
        if as_json:
            _print_json(result.summary())
        elif not quiet:
            from noisesearch.summary import print_summary

            print_summary(result)


def build_app() -> typer.Typer:
    """The typer application, with the commands that plugins add."""
    app = typer.Typer(
        name="noisesearch",
        help="Inference-time scaling for diffusion models: search noises with verifiers.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version_callback, is_eager=True,
            help="Show the version and exit.",
        ),
    ) -> None:
        """Inference-time scaling for diffusion models: search noises with verifiers."""

    _plugins_command(app)
    for command, kind in KIND_COMMANDS.items():
        _kind_command(app, command, kind)
    _run_command(app)
    try:
        get_plugin_manager().hook.register_commands(app=app)
    except NoiseSearchError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    return app


def main() -> None:
    build_app()()
