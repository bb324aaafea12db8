"""The ``noisesearch`` command line: argument parsing and printing only.

Listing commands never import torch; ``run`` hands a :class:`RunConfig` to the API.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional

import typer

from noisesearch import __version__, interrupts
from noisesearch.errors import ConfigError, NoiseSearchError
from noisesearch.plugins import build_registries, get_plugin_manager, plugin_infos

if TYPE_CHECKING:
    from noisesearch.api import SearchResult
    from noisesearch.config import RunConfig
    from noisesearch.planning import Plan

KIND_COMMANDS = {"models": "model", "verifiers": "verifier", "strategies": "strategy"}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can act on into one line and exit code 2, no traceback; Ctrl-C
    into a hint to resume and exit code 130."""
    try:
        yield
    except Exception as exc:
        if interrupts.requested():  # Ctrl-C that a library turned into another error
            _interrupted(exc)
            raise typer.Exit(130) from None
        if not isinstance(exc, NoiseSearchError):
            raise
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None  # 1: a run that failed
    except KeyboardInterrupt as exc:
        _interrupted(exc)
        raise typer.Exit(130) from None


def _interrupted(exc: BaseException) -> None:
    """What Ctrl-C leaves: the run folder to resume, when one was created."""
    _state["told"] = True
    run_dir = getattr(exc, "run_dir", None)
    if run_dir is None:
        typer.echo("Interrupted before a run folder was created; nothing to resume.", err=True)
        return
    typer.echo(f"Interrupted. {run_dir} keeps every candidate scored so far; continue with "
               f"`noisesearch run --resume {_shell_quote(str(run_dir))}`.", err=True)


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


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
        from noisesearch.plugins import LOAD_PLUGINS_ENV, left_out_plugins

        with user_errors():
            manager = _plugin_manager()
            infos = plugin_infos(manager, include_builtin=all_)
            left_out, skipped = left_out_plugins(manager)
        if as_json:
            _print_json([info.to_json() for info in infos])
            return
        # Installed plugins that did not load: "none installed" would send the user looking in
        # the wrong place when NOISESEARCH_LOAD_PLUGINS leaves them out or they failed to load.
        notes = []
        if left_out:
            notes.append(f"{LOAD_PLUGINS_ENV}={os.environ.get(LOAD_PLUGINS_ENV, '')!r} leaves out "
                         f"{len(left_out)} installed ({', '.join(left_out)})")
        if skipped:
            were = "was" if len(skipped) == 1 else "were"
            notes.append(f"{len(skipped)} installed {were} skipped ({', '.join(skipped)}: see the "
                         f"warnings)")
        if not infos:
            if notes:
                typer.echo(f"No third-party plugins loaded: {'; '.join(notes)}. Use --all to see "
                           f"the built-ins.")
            else:
                typer.echo("No third-party plugins installed (use --all to see the built-ins).")
            return
        for info in infos:
            where = f" ({info.distribution} {info.version})" if info.distribution else ""
            tag = " [built-in]" if info.builtin else ""
            typer.echo(f"{info.name}{where}{tag}: {', '.join(info.hooks)}")
        if notes:  # on stderr: stdout stays one line per plugin
            typer.echo(f"{'; '.join(notes)}.", err=True)


def _kind_command(app: typer.Typer, command: str, kind: str) -> None:
    def listing(
        name: Optional[str] = typer.Argument(None, help=f"Show one {kind} in detail."),  # noqa: UP045
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        with user_errors():
            registry = build_registries(_plugin_manager()).of(kind)
            if name is not None:
                options: dict[str, Any] = {}
                if kind == "model":  # hf:<id-or-folder>: the options of that pipeline's adapter
                    from noisesearch.config import RunConfig
                    from noisesearch.planning import _expand_model_prefix

                    probe = RunConfig(model=name)
                    _expand_model_prefix(probe)
                    name, options = str(probe.model), probe.model_options
                entry = registry.get(name)
                parameters = entry.parameters(options)
                detail = {**entry.to_json(), "parameters": [p.to_json() for p in parameters]}
                if as_json:
                    _print_json(detail)
                    return
                typer.echo(f"{entry.name} (plugin {entry.plugin})")
                typer.echo(f"  {entry.description}")
                prefix = f"{entry.name}." if kind == "verifier" else ""
                for param in parameters:
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
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        key = key.strip()
        if key in options:  # a repeated key gathers its values in a list (--model-opt lora=... twice)
            earlier = options[key]
            options[key] = [*(earlier if isinstance(earlier, list) else [earlier]), value]
        else:
            options[key] = value
    return options


def _parse_verifier_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in _parse_options(pairs, "--verifier-opt").items():
        name, dot, option = key.rpartition(".")
        if not dot or not name:
            raise ConfigError("--verifier-opt", f"expected VERIFIER.KEY=VALUE, got {key!r}")
        nested.setdefault(name, {})[option] = value
    return nested


def _model_options(model_opt: list[str] | None, init_image: str | None, strength: float | None
                   ) -> dict[str, Any] | None:
    """``--model-opt`` pairs, with ``--init-image`` and ``--strength`` as the model options
    ``init_image`` and ``strength`` (the model checks them before loading)."""
    options = _parse_options(model_opt, "--model-opt") if model_opt else {}
    for key, value in (("init_image", init_image), ("strength", strength)):
        if value is not None:
            options[key] = value
    return options or None


def _cli_layer(**given: Any) -> dict[str, Any]:
    """The RunConfig fields given on the command line: options left out are ``None`` and
    must not override a configuration file."""
    layer = {key: value for key, value in given.items() if value is not None}
    label = layer.get("label")
    if isinstance(label, str) and label.strip().isascii() and label.strip().isdigit():
        layer["label"] = int(label)  # "3" is an index; "³" or "٣" is not (str.isdigit says yes)
    return layer


def _run_command(app: typer.Typer) -> None:
    @app.command()
    def run(
        model: Optional[str] = typer.Option(None, help="Model name (see `noisesearch models`), or hf:<id-or-folder> for a diffusers pipeline. Default: shapes."),  # noqa: E501, UP045
        label: Optional[str] = typer.Option(None, help="Class label, an index or a class name (class-conditional models); default: drawn from --seed."),  # noqa: E501, UP045
        prompt: Optional[str] = typer.Option(None, help="Text prompt (text-to-image models). Default: the model's own, where it has one (shapes has one)."),  # noqa: E501, UP045
        prompts_file: Optional[str] = typer.Option(None, help="Text file, one prompt per line (# comments and blank lines skipped): one search per prompt, each in a sub-folder of the output folder."),  # noqa: E501, UP045
        negative_prompt: Optional[str] = typer.Option(None, help="Negative prompt."),  # noqa: UP045
        init_image: Optional[str] = typer.Option(None, help="img2img: start from this image file (diffusers SD 1.x/2.x, SD-XL, SD3, FLUX.1; the model option init_image)."),  # noqa: E501, UP045
        strength: Optional[float] = typer.Option(None, help="img2img: share of the steps run from the noised --init-image, in (0, 1]. Default: 0.8."),  # noqa: E501, UP045
        strategy: Optional[str] = typer.Option(None, help="Search strategy (see `noisesearch strategies`). Default: random."),  # noqa: E501, UP045
        verifier: Optional[list[str]] = typer.Option(None, help="Verifier; repeat for several (the first one is searched on). Default: the model's."),  # noqa: E501, UP045
        evaluator: Optional[str] = typer.Option(None, help="Independent judge for reports, or 'none'. Default: the model's."),  # noqa: E501, UP045
        evaluate_all: bool = typer.Option(False, "--evaluate-all", help="Score every candidate with the evaluator (the report's oracle line needs it); by default only what the run reports: the baseline, the running bests and the top-k."),  # noqa: E501
        overlap: bool = typer.Option(False, "--overlap", help="Denoise the next batch on a second thread while the last one is decoded, scored and recorded: the same result, sooner when the verifiers take a while (local executor only)."),  # noqa: E501
        candidates: Optional[int] = typer.Option(None, help="Budget in candidates (default 16 when no budget is given)."),  # noqa: E501, UP045
        budget_nfe: Optional[int] = typer.Option(None, help="Budget in denoiser evaluations, summed over candidates."),  # noqa: E501, UP045
        steps: Optional[int] = typer.Option(None, help="Solver steps per candidate (default: the model's)."),  # noqa: E501, UP045
        solver: Optional[str] = typer.Option(None, help="Solver: ddim (Euler), heun, or native (the model's own sampler, e.g. a diffusers pipeline's scheduler). Default: ddim."),  # noqa: E501, UP045
        seed: Optional[int] = typer.Option(None, help="Run seed: same seed, same candidates. Default: 0."),  # noqa: E501, UP045
        batch_size: Optional[int] = typer.Option(None, help="Candidates per batch (default: the model's)."),  # noqa: E501, UP045
        top_k: Optional[int] = typer.Option(None, help="Best candidates kept with their images. Default: 8."),  # noqa: E501, UP045
        device: Optional[str] = typer.Option(None, help="torch device, e.g. cpu or cuda."),  # noqa: UP045
        threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's). On a CPU that other jobs share, 1 can be many times faster."),  # noqa: E501, UP045
        output: Optional[str] = typer.Option(None, "--output", "-o", help="Run folder (default: noisesearch-runs/<time>-<model>-<condition>)."),  # noqa: E501, UP045
        model_opt: Optional[list[str]] = typer.Option(None, help="Model option KEY=VALUE."),  # noqa: UP045
        verifier_opt: Optional[list[str]] = typer.Option(None, help="Verifier option VERIFIER.KEY=VALUE."),  # noqa: E501, UP045
        strategy_opt: Optional[list[str]] = typer.Option(None, help="Strategy option KEY=VALUE."),  # noqa: UP045
        config_file: Optional[str] = typer.Option(None, "--config", "-c", help="Configuration file: TOML with RunConfig fields as keys, or a run's run.json to repeat it. Command-line options override it."),  # noqa: E501, UP045
        set_: Optional[list[str]] = typer.Option(None, "--set", help="Override one field: KEY=VALUE, dotted for tables (verifier_options.NAME.KEY=VALUE)."),  # noqa: E501, UP045
        resume: Optional[str] = typer.Option(None, "--resume", help="Continue an interrupted run in its folder (other options are taken from its run.json)."),  # noqa: E501, UP045
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --output (its files are removed first); without it, such a folder is refused."),  # noqa: E501
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
        verbose: bool = typer.Option(False, "--verbose", help="Keep the libraries' own loading output (diffusers' and transformers' progress bars and warnings); by default the run's status line stands for them."),  # noqa: E501
        as_json: bool = typer.Option(False, "--json", help="Print only a JSON summary on stdout."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Check everything (names, options, devices, budget, output folder), print the plan as JSON, and stop: nothing is loaded or written."),  # noqa: E501
        executor: str = typer.Option("local", help="Who solves and decodes the search's batches: local (this process) or ray (model-holding Ray actors, noisesearch[ray]; the same result)."),  # noqa: E501
        address: Optional[str] = typer.Option(None, help="Ray: join this cluster (default: start a local one and shut it down)."),  # noqa: E501, UP045
        workers: Optional[int] = typer.Option(None, help="Ray: model-holding actors (default: one per GPU, else one per CPU slot)."),  # noqa: E501, UP045
    ) -> None:
        """Search for better samples: generate candidates, score them, keep the best."""
        from noisesearch.config import config_from_mapping, load_config_file, merge_config, parse_set

        if verbose:  # read by the plugins that load models (noisesearch_builtin.quiet)
            os.environ["NOISESEARCH_VERBOSE"] = "1"
        if resume is not None:
            with user_errors():
                _refuse_options_with_resume({
                    "--model": model, "--label": label, "--prompt": prompt, "--prompts-file": prompts_file,
                    "--negative-prompt": negative_prompt, "--strategy": strategy, "--verifier": verifier,
                    "--init-image": init_image, "--strength": strength,
                    "--evaluator": evaluator, "--evaluate-all": evaluate_all or None,
                    "--overlap": overlap or None,
                    "--candidates": candidates, "--budget-nfe": budget_nfe, "--steps": steps,
                    "--solver": solver, "--seed": seed, "--batch-size": batch_size, "--top-k": top_k,
                    "--device": device, "--threads": threads, "--output": output, "--model-opt": model_opt,
                    "--verifier-opt": verifier_opt, "--strategy-opt": strategy_opt,
                    "--config": config_file, "--set": set_, "--overwrite": overwrite or None,
                    "--dry-run": dry_run or None, "--executor": None if executor == "local" else executor,
                    "--address": address, "--workers": workers,
                })
            _resume(resume, quiet, as_json)
            return
        with user_errors():
            layers = [load_config_file(config_file)] if config_file else []
            layers.append(parse_set(set_ or []))
            layers.append(_cli_layer(
                model=model, strategy=strategy, verifiers=verifier or None, evaluator=evaluator,
                prompt=prompt, negative_prompt=negative_prompt, label=label,
                candidates=candidates, budget_nfe=budget_nfe, steps=steps, solver=solver,
                seed=seed, batch_size=batch_size, top_k=top_k, device=device, threads=threads, output=output,
                overwrite=overwrite or None, evaluate_all=evaluate_all or None, overlap=overlap or None,
                model_options=_model_options(model_opt, init_image, strength),
                verifier_options=_parse_verifier_options(verifier_opt) if verifier_opt else None,
                strategy_options=(
                    _parse_options(strategy_opt, "--strategy-opt") if strategy_opt else None
                ),
            ))
            config = config_from_mapping(merge_config(*layers))
            plans = _plan_searches(config, prompts_file)
            spread = _spread(executor, address, workers, plans[0])  # Ray missing: refused here
            if dry_run:
                if spread is not None:
                    spread.close()
                from noisesearch.api import check_output_folder

                for checked in plans:  # as the run would, before it loads anything
                    check_output_folder(checked)
                described = [_describe_plan(checked) for checked in plans]
                _print_json(described if prompts_file else described[0])
                return
            try:
                outcomes = [run_plan(checked, progress=not quiet and not as_json, spread=spread)
                            for checked in plans]
            finally:
                if spread is not None:
                    spread.close()
        if as_json:
            summaries = [result.summary() for result in outcomes]
            _print_json(summaries if prompts_file else summaries[0])
        elif not quiet:
            from noisesearch.summary import print_summary

            for result in outcomes:
                print_summary(result)


def _refuse_options_with_resume(given: dict[str, Any]) -> None:
    """A resume re-runs the folder's own configuration: an option that would change it is
    refused rather than silently ignored (or mixed into the run)."""
    from noisesearch.errors import ConfigError

    extra = [name for name, value in given.items() if value]
    if extra:
        raise ConfigError(
            "resume", f"--resume continues the run with the configuration in its run.json; "
            f"drop {', '.join(extra)} (to change the configuration, start a new run)",
        )


def _resume(run_dir: str, quiet: bool, as_json: bool) -> None:
    from pathlib import Path

    from noisesearch.api import resume_run

    with user_errors():
        result = resume_run(Path(run_dir), progress=not quiet and not as_json,
                            registries=build_registries(_plugin_manager()))
    if as_json:
        _print_json(result.summary())
    elif not quiet:
        from noisesearch.summary import print_summary

        print_summary(result)


def run_plan(checked: Plan, progress: bool, spread: Any = None) -> SearchResult:
    from noisesearch.api import run_plan as run
    from noisesearch.api import spread_dispatch

    return run(checked, progress=progress, dispatch=spread_dispatch(spread, checked) if spread else None)


def _spread(executor: str, address: str | None, workers: int | None, checked: Plan) -> Any:
    """``run --executor NAME``: the executor that spreads each search's batches over its
    workers (None: local), built before anything is written."""
    if executor == "local":
        if address is not None or workers is not None:
            raise ConfigError("executor", "--address and --workers are for --executor ray")
        return None
    from noisesearch.api import search_executor

    options = {k: v for k, v in {"address": address, "workers": workers}.items() if v is not None}
    return search_executor(executor, options, checked)


def _describe_plan(checked: Plan) -> dict[str, Any]:
    """What ``run --dry-run`` prints: the effective configuration and what it resolved to."""
    return {
        "config": checked.config.to_json(),
        "condition": checked.condition.to_json(),
        "model": checked.model.name,
        "verifiers": [entry.name for entry in checked.verifiers],
        "evaluator": checked.evaluator.name if checked.evaluator else None,
        "strategy": checked.strategy.name,
        "steps": checked.steps,
        "budget": {"candidates": checked.budget.candidates, "nfe": checked.budget.nfe},
        "output": str(checked.output) if checked.output else None,
    }


def _plan_searches(config: RunConfig, prompts_file: str | None) -> list[Plan]:
    """One search, or one per prompt of a prompts file, each in a sub-folder of the output
    folder; every prompt is planned (checked) before the first one runs."""
    import copy
    from pathlib import Path

    from noisesearch.api import DEFAULT_OUTPUT_ROOT, plan

    if prompts_file is None:
        return [plan(config, build_registries(_plugin_manager()))]
    from noisesearch.config import read_prompts
    from noisesearch.names import safe_name
    from noisesearch.results import default_run_dir

    if config.prompt is not None:
        raise ConfigError("--prompts-file", "give --prompt or --prompts-file, not both")
    prompts = read_prompts(prompts_file)
    root = Path(config.output) if config.output else default_run_dir(
        DEFAULT_OUTPUT_ROOT, config.model, "prompts"
    )
    plans = []
    for number, prompt in enumerate(prompts, 1):
        one = copy.deepcopy(config)
        one.prompt = prompt
        one.output = str(root / f"{number:03d}-{safe_name(prompt)}")
        plans.append(plan(one, build_registries(_plugin_manager())))
    return plans


def _show_command(app: typer.Typer) -> None:
    @app.command()
    def show(
        run_dir: str = typer.Argument(..., metavar="RUN", help="A run folder (or its run.json)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Summarise a run folder: what ran, what it cost, the first candidate against the best."""
        from noisesearch.runs import load_run, run_summary

        with user_errors():
            record = load_run(run_dir, candidates=False)
            if not record.complete:
                record = load_run(run_dir)
        summary = run_summary(record)
        run = record.run
        if as_json:
            _print_json({**summary, "config": record.config, "usage": run.get("usage"),
                         "baseline": run.get("baseline"), "best_candidate": run.get("best"),
                         "verdicts": run.get("verdicts"), "timings": run.get("timings")})
            return
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        from noisesearch.report import describe_condition

        console = Console()
        usage = run.get("usage") or {}
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold")
        facts.add_column(overflow="fold")  # a path folded, not cut short
        budget = record.budget
        for key, value in (
            ("run", str(record.path)),
            ("status", record.status),
            ("model", summary["model"]),
            ("condition", describe_condition(run.get("condition"))),
            ("strategy", summary["strategy"]),
            ("searched on", summary["objective"]),
            ("judge", record.judge),
            ("budget", f"{budget.get('candidates') or '-'} candidates, {budget.get('nfe') or '-'} NFEs"),
            ("used", f"{_or_dash(summary['candidates'])} candidates, {_or_dash(summary['nfe'])} NFEs, "
                     f"{usage.get('verifier_calls', '-')} verifier calls, {run.get('seconds', '-')} s"),
            ("device", f"{run.get('device', '-')} {run.get('dtype', '')}"),
            ("non-finite", f"{summary['non_finite']} candidates had a NaN or infinite objective "
                           f"(never selected)" if summary.get("non_finite") else None),
        ):
            if value is not None:
                style = "red" if key == "status" and record.status in ("failed", "interrupted") else ""
                facts.add_row(key, Text(str(value), style=style))
        console.print(facts)
        if record.status in ("failed", "interrupted"):  # whole, unwrapped: it holds a command
            console.print(Text(record.describe_status(), style="red"), soft_wrap=True)
        names = [n for n in (record.config.get("verifiers") or []) + [record.evaluator] if n]
        table = Table()
        table.add_column("")
        table.add_column("candidate", justify="right")
        for name in names:
            table.add_column(_escape(name), justify="right")
        verdicts = run.get("verdicts") or {}
        if verdicts:
            table.add_column("judge says", justify="left" if "baseline_clauses" in verdicts else "right")
        shown = (("no search", "baseline"), (f"best of {_or_dash(summary['candidates'])}", "best"))
        for title, key in shown:
            candidate = run.get(key)
            if not candidate:
                continue
            scores = candidate.get("scores") or {}
            cells = [title, str(candidate.get("index"))]
            cells += [f"{scores[n]:.4f}" if isinstance(scores.get(n), (int, float)) else "-" for n in names]
            if verdicts:
                from noisesearch.summary import verdict_text

                cells.append(verdict_text(verdicts, key))
            table.add_row(*cells)
        if table.row_count:
            console.print(table)
        elif summary["best"] is not None:
            console.print(f"best objective so far: {summary['best']:.4f}")


def _or_dash(value: Any) -> Any:
    """``-`` for a count a run never wrote (interrupted early), not ``None``; a 0 stays 0."""
    return "-" if value is None else value


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _report_command(app: typer.Typer) -> None:
    @app.command()
    def report(
        run_dir: str = typer.Argument(..., metavar="RUN", help="A run folder (or its run.json)."),
    ) -> None:
        """Rebuild a run's report.html and scaling.png from run.json and candidates.jsonl."""
        from noisesearch.report import write_report

        with user_errors():
            page = write_report(run_dir)
        typer.echo(str(page))


def _runs_command(app: typer.Typer) -> None:
    @app.command()
    def runs(
        folder: str = typer.Argument("noisesearch-runs", help="Where to look, at any depth."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List the runs under a folder: model, strategy, budget used, best score, complete or not."""
        from noisesearch.report import describe_condition
        from noisesearch.runs import list_runs

        with user_errors():
            found = list_runs(folder)
        if as_json:
            _print_json(found)
            return
        if not found:
            typer.echo(f"No runs under {folder}.")
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"runs under {_escape(folder)}")
        for column in ("run", "model", "condition", "strategy", "NFEs", "candidates", "best", "status"):
            # the run's name is what `show` takes: folded onto more lines, never cut short
            table.add_column(column, justify="right" if column in ("NFEs", "candidates", "best") else "left",
                             overflow="fold" if column == "run" else "ellipsis")
        for row in found:
            if "error" in row:
                table.add_row(_escape(row["run"]), "", "", "", "", "", "", f"[red]{_escape(row['error'])}[/]")
                continue
            best = f"{row['best']:.4g}" if isinstance(row["best"], (int, float)) else "-"
            table.add_row(
                _escape(row["run"]), _escape(str(row["model"] or "-")),
                _escape(describe_condition(row["condition"]) if row["condition"] is not None else "-"),
                _escape(str(row["strategy"] or "-")), str(row["nfe"] if row["nfe"] is not None else "-"),
                str(row["candidates"] if row["candidates"] is not None else "-"), best,
                _status_cell(row),
            )
        Console(width=max(Console().width, 120)).print(table)
        stopped = [row for row in found if row.get("status") in ("failed", "interrupted")]
        if stopped:
            typer.echo(f"{len(stopped)} run(s) did not finish; continue one with "
                       f"`noisesearch run --resume RUN` (see `noisesearch show RUN`).")


def _status_cell(row: dict[str, Any]) -> str:
    """complete, running, interrupted, or failed: <error> (red), for the runs table."""
    status = row.get("status") or ("complete" if row.get("complete") else "incomplete")
    if status == "failed":
        return f"[red]failed: {_escape(str(row.get('run_error') or 'unknown error'))}[/]"
    if status == "interrupted":
        return "[yellow]interrupted[/]"
    return status


def _replay_command(app: typer.Typer) -> None:
    @app.command()
    def replay(
        run_dir: str = typer.Argument(..., help="A run folder of `noisesearch run` (or its run.json)."),
    ) -> None:
        """Regenerate a run's best candidate from its recipe and check it is the same image."""
        from noisesearch.api import replay_run
        from noisesearch.runs import run_folder

        with user_errors():
            folder = run_folder(run_dir)
            outcome = replay_run(folder)
        verdict = "identical (bit for bit)" if outcome.identical else (
            f"DIFFERENT (max abs difference {outcome.max_abs_diff:.3g})"
        )
        recorded = "-" if outcome.recorded_score is None else f"{outcome.recorded_score:.6g}"
        score = "" if outcome.score is None else f"; score {outcome.score:.6g} (recorded {recorded})"
        typer.echo(f"replayed best of {folder}: {verdict}{score}")
        typer.echo(f"wrote {folder / 'replay.png'}")
        if not outcome.identical:
            raise typer.Exit(1)


_state: dict[str, Any] = {}


def _plugin_manager() -> Any:
    """The plugin manager of the app being run: built once by :func:`build_app`, so that a
    broken plugin warns once per command, not once per lookup."""
    if "manager" not in _state:
        _state["manager"] = get_plugin_manager()
    return _state["manager"]


def _show_plugin_warnings_briefly() -> None:
    """Print a plugin that failed to load as one ``Warning:`` line, not a source excerpt."""
    import warnings

    from noisesearch.plugins import PluginLoadWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if issubclass(category, PluginLoadWarning):
            typer.echo(f"Warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


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
    _replay_command(app)
    _show_command(app)
    _report_command(app)
    _runs_command(app)
    from noisesearch.bench.cli import register as register_bench

    register_bench(app)
    try:
        _state["manager"] = get_plugin_manager()
        _add_plugin_commands(app)
    except NoiseSearchError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    return app


def _command_name(info: Any) -> str:
    """The name typer gives a registered command (``CommandInfo``) or group (``TyperInfo``)."""
    from typer.main import get_command_name

    if getattr(info, "name", None):
        return str(info.name)
    callback = getattr(info, "callback", None)
    if callback is not None:
        return get_command_name(callback.__name__)
    instance = getattr(info, "typer_instance", None)
    return str(getattr(getattr(instance, "info", None), "name", None) or "")


def _add_plugin_commands(app: typer.Typer) -> None:
    """Each plugin's ``register_commands``, one at a time: a hook that raises skips that
    plugin with a warning (every command would fail otherwise), and a command named like a
    built-in one is dropped with a warning instead of silently replacing ours."""
    import warnings

    from noisesearch.plugins import (
        DEFAULT_PLUGINS,
        PluginLoadWarning,
        call_hookimpl,
        distribution_of,
        skip_plugin,
    )

    manager = _plugin_manager()
    listed = (app.registered_commands, app.registered_groups)
    builtin = {_command_name(info) for infos in listed for info in infos}
    for impl in manager.hook.register_commands.get_hookimpls():
        before = [len(infos) for infos in listed]
        try:
            call_hookimpl(impl, app=app)
        except Exception as exc:
            for infos, count in zip(listed, before):
                del infos[count:]
            if impl.plugin_name in DEFAULT_PLUGINS:
                raise
            skip_plugin(manager, impl.plugin_name,
                        f"its register_commands hook raised {type(exc).__name__}: {exc}.")
            continue
        for infos, count in zip(listed, before):
            for info in [info for info in infos[count:] if _command_name(info) in builtin]:
                infos.remove(info)
                warnings.warn(
                    f"plugin {impl.plugin_name!r} (distribution "
                    f"{distribution_of(impl.plugin_name)!r}) adds a command "
                    f"{_command_name(info)!r}, which is a built-in command; the plugin's "
                    f"command was left out",
                    PluginLoadWarning, stacklevel=2,
                )


def main() -> None:
    """The console script's body (see :mod:`noisesearch.console`, which guards the imports)."""
    try:
        interrupts.install()
        _show_plugin_warnings_briefly()
        app = build_app()
    except KeyboardInterrupt as exc:  # while the plugins load
        _interrupted(exc)
        sys.exit(130)
    try:
        app()
    except SystemExit as exc:  # typer turns a Ctrl-C outside a command's own handling into 130
        if exc.code == 130 and interrupts.requested() and not _state.get("told"):
            typer.echo("Interrupted.", err=True)
        raise
