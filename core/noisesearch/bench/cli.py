"""The ``noisesearch bench`` command: a grid from a TOML file and/or options, then
:func:`noisesearch.bench.runner.run_bench`. Argument parsing and printing only."""

from __future__ import annotations

from typing import Any, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the application (called by ``noisesearch.cli.build_app``)."""

    @app.command()
    def bench(
        grid_file: Optional[str] = typer.Argument(None, metavar="GRID.toml", help="A bench grid file; options below override its keys."),  # noqa: E501, UP045
        model: Optional[list[str]] = typer.Option(None, help="Model (repeat for several). Default: digits."),  # noqa: UP045
        strategy: Optional[list[str]] = typer.Option(None, help="Strategy NAME or NAME:KEY=VALUE,KEY=VALUE (repeat). Default: random."),  # noqa: E501, UP045
        budget: Optional[list[int]] = typer.Option(None, help="NFE budget (repeat). Default: 40, 80, 160."),  # noqa: E501, UP045
        verifier: Optional[list[str]] = typer.Option(None, help="Searched-on verifier (repeat; an ensemble counts as one). Default: the model's."),  # noqa: E501, UP045
        evaluator: Optional[list[str]] = typer.Option(None, help="Held-out evaluator (repeat); never searched on. Default: the model's."),  # noqa: E501, UP045
        prompts: Optional[str] = typer.Option(None, help="Suite: 'model' (the model's own), 'geneval-style', 'drawbench:FILE', or a suite FILE."),  # noqa: E501, UP045
        per_category: Optional[int] = typer.Option(None, help="At most this many conditions per suite category."),  # noqa: E501, UP045
        limit: Optional[int] = typer.Option(None, help="At most this many conditions, spread over the categories."),  # noqa: E501, UP045
        seed: Optional[list[int]] = typer.Option(None, help="Seed (repeat). Default: 0."),  # noqa: UP045
        steps: Optional[int] = typer.Option(None, help="Solver steps per sample (default: the model's)."),  # noqa: UP045
        solver: Optional[str] = typer.Option(None, help="ddim or heun."),  # noqa: UP045
        batch_size: Optional[int] = typer.Option(None, help="Candidates per batch (default: the model's)."),  # noqa: E501, UP045
        device: Optional[str] = typer.Option(None, help="torch device."),  # noqa: UP045
        threads: Optional[int] = typer.Option(None, help="torch threads per worker (results are bit-exact for a given count)."),  # noqa: E501, UP045
        baseline: Optional[list[str]] = typer.Option(None, help="Baselines to run (repeat): default, more-steps, stochastic. Default: all."),  # noqa: E501, UP045
        overlap: bool = typer.Option(False, "--overlap", help="In each cell, denoise the next batch while the last is scored (the same results)."),  # noqa: E501
        cell_reports: bool = typer.Option(False, "--cell-reports", help="Also draw each cell's report.html (about 0.5 s a cell on a CPU; `noisesearch report RUN` can later)."),  # noqa: E501
        output: Optional[str] = typer.Option(None, "--output", "-o", help="Bench folder (default: noisesearch-bench/<model>-<grid hash>, so re-running continues)."),  # noqa: E501, UP045
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the bench of another grid in the --output folder (its rows and tables); without it such a folder is refused."),  # noqa: E501
        executor: str = typer.Option("local", help="local (in this process) or ray (noisesearch[ray])."),
        address: Optional[str] = typer.Option(None, help="Ray: join this cluster (default: start a local one and shut it down)."),  # noqa: E501, UP045
        workers: Optional[int] = typer.Option(None, help="Ray: model-holding actors (default: one per GPU, else 2 CPU slots)."),  # noqa: E501, UP045
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    ) -> None:
        """Measure inference-time scaling: strategies x NFE budgets x verifiers over a prompt
        suite, with held-out evaluators and verifier-free baselines at the same NFEs."""
        from noisesearch import interrupts
        from noisesearch.bench.grid import grid_from_mapping, load_grid_file
        from noisesearch.bench.runner import run_bench
        from noisesearch.cli import _state, user_errors

        given: dict[str, Any] = {
            "models": model, "strategies": strategy, "budgets": budget, "verifiers": verifier,
            "evaluators": evaluator, "prompts": prompts, "per_category": per_category,
            "limit": limit, "seeds": seed, "steps": steps, "solver": solver,
            "batch_size": batch_size, "device": device, "threads": threads,
            "baselines": baseline, "output": output, "cell_reports": cell_reports, "overlap": overlap,
        }
        options = {k: v for k, v in {"address": address, "workers": workers}.items() if v is not None}
        result = None
        with user_errors():
            data = load_grid_file(grid_file) if grid_file else {}
            data.update({k: v for k, v in given.items() if _given(v)})
            grid = grid_from_mapping(data, where=grid_file or "the command line")
            # Ctrl-C is told below, outside user_errors (whose message is about run folders),
            # also when a library turned it into another error.
            try:
                result = run_bench(grid, executor, options, progress=not quiet, overwrite=overwrite)
            except KeyboardInterrupt:
                pass
            except Exception:
                if not interrupts.requested():
                    raise
        if result is None:
            _state["told"] = True  # the console script's main() says nothing more
            typer.echo("Interrupted. Finished cells are kept; run the same command again to "
                       "continue the bench.", err=True)
            raise typer.Exit(130)
        if not quiet:
            typer.echo(f"{len(result.rows)} cells ({result.ran} run now, {len(result.failed)} failed) "
                       f"in {result.seconds:.1f} s")
            typer.echo(f"wrote {result.folder / 'summary.md'} and {result.folder / 'report.html'}")
        if result.failed:
            raise typer.Exit(1)


def _given(value: Any) -> bool:
    """Whether an option was given: ``None``, an empty repeatable option and an absent flag
    (``False``) were not, and leave the grid file's key alone. Any other value was, ``0``
    included: it overrides the file and reaches validation (``--limit 0`` is refused, as
    ``limit = 0`` in a file is), never silently dropped."""
    return value is not None and value is not False and value != [] and value != ()
