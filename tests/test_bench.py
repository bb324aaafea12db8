"""`noisesearch bench` on the embedded digits model: grid checks, suites, outputs, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import noisesearch
from noisesearch.bench import store
from noisesearch.bench.cells import TIMING_COLUMNS
from noisesearch.bench.grid import BenchGrid, StrategySpec, grid_from_mapping
from noisesearch.bench.runner import expand, run_bench
from noisesearch.bench.suites import check_items, parse_suite, subset
from noisesearch.cli import build_app
from noisesearch.errors import ConfigError
from noisesearch.plugins import build_registries

BENCH_FILES = {"bench.json", "results.jsonl", "results.csv", "summary.md", "report.html",
               "scaling-digits-evaluator.png", "hacking.png", "runs"}


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def small_grid(output: Path, **changes) -> BenchGrid:
    fields = dict(models=["digits"], strategies=[StrategySpec("random"), StrategySpec("paths")],
                  budgets=[40], seeds=[0], limit=2, output=str(output), threads=1)
    fields.update(changes)
    return BenchGrid(**fields)


def comparable(rows: list[dict]) -> list[dict]:
    """Rows without timing columns and the folder they were written to."""
    return [{k: v for k, v in row.items() if k not in (*TIMING_COLUMNS, "run_dir")} for row in rows]


# -- the grid is checked before any model loads ---------------------------------------------------

@pytest.mark.parametrize(("args", "field"), [
    (["--strategy", "randon"], "strategies"),
    (["--verifier", "digits-evaluator"], "evaluators"),
    (["--evaluator", "no-such-judge"], "evaluators"),
    (["--model", "digitz"], "models"),
    (["--budget", "10"], "budgets"),
    (["--strategy", "paths:backward=0.1"], "paths.backward"),
    (["--baseline", "oracle"], "baselines"),
])
def test_bad_grids_exit_2_naming_the_field_and_create_nothing(args: list[str], field: str,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = invoke("bench", "--model", "digits", "-o", str(out), *args)
    assert result.exit_code == 2, result.output
    assert f"Error: {field}" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_a_grid_file_is_read_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text('models = ["digits"]\nbudgets = [40, 80]\nseeds = [0, 1]\n'
                    '[[strategies]]\nname = "paths"\noptions = {children = 1}\nlabel = "paths-c1"\n')
    from noisesearch.bench.grid import load_grid_file

    parsed = grid_from_mapping(load_grid_file(grid))
    assert parsed.strategies[0].label == "paths-c1" and parsed.strategies[0].options == {"children": 1}
    grid.write_text('models = ["digits"]\nbudget = [40]\n')
    result = invoke("bench", str(grid), "-o", str(tmp_path / "b"))
    assert result.exit_code == 2 and "budget: unknown key" in result.output


def test_a_strategy_option_may_be_a_list_on_the_command_line() -> None:
    from noisesearch.bench.grid import parse_strategy

    spec = parse_strategy("pruning:checkpoints=[0.6,0.3],keep=0.5")
    assert spec.name == "pruning" and spec.options == {"checkpoints": [0.6, 0.3], "keep": 0.5}


def test_an_evaluator_that_is_a_searched_ensembles_member_is_refused(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text('models = ["digits"]\nbudgets = [40]\nverifiers = ["ensemble"]\n'
                    'evaluators = ["digits-evaluator"]\n[verifier_options.ensemble]\n'
                    'members = ["digits-classifier", "digits-evaluator"]\n')
    out = tmp_path / "bench"
    result = invoke("bench", str(grid), "-o", str(out))
    assert result.exit_code == 2, result.output
    assert "Error: evaluators" in result.output and "digits-evaluator" in result.output
    assert not out.exists()


def test_cells_cover_strategies_and_the_three_baselines_with_stable_keys(tmp_path: Path) -> None:
    registries = build_registries()
    grid = small_grid(tmp_path / "a", budgets=[40, 80], seeds=[0, 1])
    cells = expand(grid, registries)
    labels = {cell.strategy for cell in cells}
    assert labels == {"random", "paths", "baseline:default", "baseline:more-steps", "baseline:stochastic"}
    # 2 conditions x 2 seeds x (1 default + 2 budgets x (2 strategies + 2 budgeted baselines))
    assert len(cells) == 2 * 2 * (1 + 2 * 4)
    more = [cell for cell in cells if cell.strategy == "baseline:more-steps"]
    assert {(cell.budget, cell.config["steps"]) for cell in more} == {(40, 40), (80, 80)}
    assert len({cell.key for cell in cells}) == len(cells)
    again = expand(small_grid(tmp_path / "b", budgets=[40, 80], seeds=[0, 1]), registries)
    assert [cell.key for cell in again] == [cell.key for cell in cells]  # the folder is no part of it


# -- suites -----------------------------------------------------------------------------------------

def test_suite_files_skip_blanks_and_comments_and_keep_categories() -> None:
    items = parse_suite("# made by hand\n\n# animals\na cat\n  \na dog\n# vehicles\na bus\n", "s.txt")
    assert [(i.prompt, i.category, i.line) for i in items] == [
        ("a cat", "animals", 4), ("a dog", "animals", 6), ("a bus", "vehicles", 8)]
    assert [i.prompt for i in subset(items, None, 2)] == ["a cat", "a bus"]  # spread over categories
    assert [i.prompt for i in subset(items, 1, None)] == ["a cat", "a bus"]


def test_a_label_on_a_text_model_and_a_prompt_on_a_label_model_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2: a label"):
        check_items(parse_suite("a cat\nlabel:3\n", "s.txt"), "prompt", "sd", "s.txt")
    suite = tmp_path / "mine.txt"
    suite.write_text("# digits I care about\nlabel:3\n\na photo of a seven\n")
    out = tmp_path / "bench"
    result = invoke("bench", "--model", "digits", "--prompts", str(suite), "-o", str(out))
    assert result.exit_code == 2 and "line 4: a prompt" in result.output
    assert not out.exists()


def test_shipped_suites_parse() -> None:
    from noisesearch.bench.suites import NAMED_SUITES, read_suite_file

    geneval = read_suite_file(NAMED_SUITES["geneval-style"])
    assert len(geneval) >= 24 and len({i.category for i in geneval}) == 6
    assert all(i.prompt for i in geneval)
    from noisesearch_builtin.models.digits import DigitsModel

    labels = read_suite_file(DigitsModel.prompt_suite)
    assert sorted(i.label for i in labels) == list(range(10))


def test_a_drawbench_csv_copy_loads_with_its_categories(tmp_path: Path) -> None:
    from noisesearch.bench.suites import load_suite

    copy = tmp_path / "drawbench.csv"
    copy.write_text('Prompts,Category\n"A red colored car.",Colors\n"Two cats and one dog.",Counting\n')
    items = load_suite(f"drawbench:{copy}", None, "sd")
    assert [(i.prompt, i.category) for i in items] == [("A red colored car.", "Colors"),
                                                       ("Two cats and one dog.", "Counting")]


# -- running, outputs, failures and resume ------------------------------------------------------------

@pytest.mark.slow
def test_a_bench_writes_its_folder_and_an_interrupted_one_ends_the_same(tmp_path: Path) -> None:
    whole = run_bench(small_grid(tmp_path / "whole"))
    assert not whole.failed
    folder = whole.folder
    assert {p.name for p in folder.iterdir()} >= BENCH_FILES
    assert len(whole.rows) == 2 * (1 + 2 + 2)
    row = whole.rows[1]
    assert row["status"] == "ok" and row["nfe"] <= 40
    assert set(row["scores"]) == {"digits-classifier", "digits-evaluator"}
    assert (Path(row["run_dir"]) / "run.json").is_file()
    summary = (folder / "summary.md").read_text()
    assert "baseline:stochastic" in summary and "±" in summary
    csv_lines = (folder / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(whole.rows) and "score:digits-evaluator" in csv_lines[0]

    # The same bench interrupted after 3 cells (with a half-written 4th line), then re-run.
    cut = tmp_path / "cut"
    run_bench(small_grid(cut))
    lines = (cut / "results.jsonl").read_text().splitlines()
    (cut / "results.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    resumed = run_bench(small_grid(cut))
    assert resumed.ran == len(whole.rows) - 3
    assert comparable(resumed.rows) == comparable(whole.rows)
    again = run_bench(small_grid(cut))
    assert again.ran == 0 and comparable(again.rows) == comparable(whole.rows)
    assert len((cut / "results.jsonl").read_text().splitlines()) == len(whole.rows)

    # Each cell is an ordinary run folder.
    run_dir = Path(whole.rows[1]["run_dir"])
    assert invoke("show", str(run_dir)).exit_code == 0
    assert invoke("replay", str(run_dir)).exit_code == 0


@pytest.mark.slow
def test_a_failing_cell_is_recorded_and_the_bench_goes_on(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from noisesearch_builtin.search.paths import SearchOverPaths

    def broken(self, context):  # noqa: ANN001, ANN202 - a strategy that crashes mid-search
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(SearchOverPaths, "run", broken)
    out = tmp_path / "bench"
    result = invoke("bench", "--model", "digits", "--strategy", "random", "--strategy", "paths",
                    "--budget", "40", "--limit", "1", "--baseline", "default", "-o", str(out), "-q")
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["strategy"], r["status"]) for r in rows] == [
        ("baseline:default", "ok"), ("random", "ok"), ("paths", "failed")]
    assert "out of memory" in rows[2]["error"]
    assert "Failed cells" in (out / "summary.md").read_text()
    monkeypatch.undo()  # fixed: the re-run runs only the failed cell
    rerun = run_bench(grid_from_mapping({"models": ["digits"], "strategies": ["random", "paths"],
                                         "budgets": [40], "limit": 1, "baselines": ["default"],
                                         "output": str(out)}))
    assert rerun.ran == 1 and not rerun.failed and len(rerun.rows) == 3


def test_the_public_api_names_bench() -> None:
    assert callable(noisesearch.bench)
    assert "bench" in noisesearch.__all__


def test_store_ignores_a_half_written_line_and_keeps_the_last_row_per_key(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a", "status": "failed"}\n{"key": "a", "status": "ok"}\n{"key": "b", "st')
    assert {k: r["status"] for k, r in store.read_rows(path).items()} == {"a": "ok"}
    appender = store.RowAppender(path)
    appender.append({"key": "b", "status": "ok"})
    appender.close()
    assert path.read_text().splitlines()[-1] == '{"key": "b", "status": "ok"}'


# -- the verifier-free stochastic baseline ------------------------------------------------------------

def test_the_stochastic_baseline_spends_its_formula_and_finishes_one_sample() -> None:
    from noisesearch.engine import Budget, Engine, Scorer, SearchContext
    from noisesearch.testing import BrightnessVerifier, GaussianModel, run_strategy
    from noisesearch_builtin.search.stochastic import StochasticSampler

    strategy = StochasticSampler(paths=2, children=3)
    run = run_strategy(strategy, Budget(nfe=100_000), steps=20, batch_size=5)
    assert len(run.candidates) == 1
    model = GaussianModel()
    engine = Engine(model, noisesearch.Condition(), Scorer({"v": BrightnessVerifier()}), Budget(),
                    model.schedule.levels(20))
    assert run.usage.nfe == strategy.nfe_cost(SearchContext(engine), 2)


def test_the_stochastic_baseline_winner_does_not_depend_on_the_verifier() -> None:
    import torch

    runs = [noisesearch.search(model="digits", label=4, strategy="stochastic", budget_nfe=200,
                               verifiers=[name], evaluator="none", write=False)
            for name in ("digits-classifier", "digits-evaluator")]
    assert torch.equal(runs[0].best.image, runs[1].best.image)
    assert runs[0].usage.nfe > 20 * 2  # it re-noised along the way: more than two plain samples


@pytest.mark.slow
def test_the_bench_report_renders_in_headless_chromium_and_is_self_contained(tmp_path: Path) -> None:
    import re

    from test_report import CHECK_SCRIPT, chromium, headless

    from noisesearch.report import CSP

    result = run_bench(small_grid(tmp_path / "bench", strategies=[StrategySpec("random")], limit=1,
                                  baselines=["default", "more-steps"]))
    page = (result.folder / "report.html").read_text()
    assert CSP in page and "http://" not in page and "https://" not in page
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    browser = chromium()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace(CSP, CSP + "; script-src 'unsafe-inline'")
                     .replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = headless(browser, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom",
                   probe.as_uri())
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body and 'data-checked="yes"' in body.group(1), dom.stderr[-2000:]
    attributes = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    assert attributes["data-images"] == "2" and attributes["data-broken"] == ""
    assert dom.stdout.count("<tr class=") == 3  # random, and the two baselines, at 40 NFEs


@pytest.mark.slow
def test_a_bench_killed_midway_and_rerun_ends_with_the_same_results(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    command = str(Path(sys.executable).parent / "noisesearch")  # the console script, as a user runs it
    args = [command, "bench", "--model", "digits", "--strategy", "random", "--strategy", "paths",
            "--budget", "40", "--budget", "80", "--limit", "2", "--threads", "1", "-q"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert subprocess.run([*args, "-o", str(whole)], capture_output=True, timeout=300).returncode == 0
    process = subprocess.Popen([*args, "-o", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    results = killed / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 4:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the bench finished before it could be killed"
    done_before = len(results.read_text().splitlines())
    rerun = subprocess.run([*args, "-o", str(killed)], capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    expected = [json.loads(line) for line in (whole / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(expected) > done_before
    assert comparable(rows) == comparable(expected)


def test_resources_are_declared_per_model_of_the_grid() -> None:
    grid = grid_from_mapping({"models": ["digits"], "resources": {"digits": {"num_cpus": 1}}})
    assert grid.resources == {"digits": {"num_cpus": 1}}
    with pytest.raises(ConfigError, match="resources"):
        grid_from_mapping({"models": ["digits"], "resources": {"flux-dev": {"num_gpus": 1}}})
    with pytest.raises(ConfigError, match="resources"):
        grid_from_mapping({"models": ["digits"], "resources": {"digits": {"gpus": 1}}})


@pytest.mark.slow
def test_the_overhead_benchmark_runs_quickly(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_overhead.py"
    out = tmp_path / "numbers.json"
    done = subprocess.run([sys.executable, str(script), "--quick", "--skip-ray", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    numbers = json.loads(out.read_text())["overhead"]
    assert numbers["cells"] == 10 and 0 < numbers["sum_search_s"] < numbers["wall_s"]


def test_winners_diversity_across_seeds_compares_the_seeds_of_one_condition(tmp_path: Path) -> None:
    from PIL import Image

    from noisesearch.bench.outputs import seed_diversity

    rows = []
    for seed, (label, value) in enumerate([(1, 0), (1, 255), (2, 7), (2, 7)]):
        run_dir = tmp_path / f"run{seed}"
        run_dir.mkdir()
        Image.new("RGB", (4, 4), (value, value, value)).save(run_dir / "best.png")
        rows.append({"run_dir": str(run_dir), "label": label, "prompt": None})
    # label 1: black against white (distance 1); label 2: the same image twice (0)
    assert seed_diversity(rows, {}) == 0.5
    assert seed_diversity(rows[:1], {}) is None


def test_overlap_in_a_bench_changes_no_row_and_continues_the_same_bench(tmp_path: Path) -> None:
    plain = run_bench(small_grid(tmp_path / "plain", strategies=[StrategySpec("random")], limit=1))
    overlapped = run_bench(small_grid(tmp_path / "overlap", strategies=[StrategySpec("random")], limit=1,
                                      overlap=True, batch_size=1))
    assert not overlapped.failed
    assert json.loads((Path(overlapped.rows[0]["run_dir"]) / "run.json").read_text())["config"]["overlap"]
    again = run_bench(small_grid(tmp_path / "plain", strategies=[StrategySpec("random")], limit=1,
                                 overlap=True))
    assert again.ran == 0  # the same cells: overlap is not part of a cell's key
    with_batches = run_bench(small_grid(tmp_path / "plain2", strategies=[StrategySpec("random")], limit=1,
                                        batch_size=1))
    assert comparable(overlapped.rows) == comparable(with_batches.rows)
    assert comparable(again.rows) == comparable(plain.rows)
    with pytest.raises(noisesearch.ConfigError, match="overlap"):
        small_grid(tmp_path / "bad", overlap="yes").validate()


# -- outputs: models, evaluators, baselines and the report (probe7 D1, D4, D7, D11) -------------------

def _row(model: str, strategy: str, budget: int | None, label: int, score: float, **extra) -> dict:
    """A finished row as a cell writes it, searched on ``clip-score``, judged by ``judge``."""
    kind = "baseline" if strategy.startswith("baseline:") else "search"
    row = {"key": f"{model}-{strategy}-{budget}-{label}", "model": model, "strategy": strategy,
           "kind": kind, "verifier": None if kind == "baseline" else "clip-score",
           "verifiers": ["clip-score"], "evaluators": ["judge"], "budget": budget, "label": label,
           "prompt": None, "seed": 0, "status": "ok", "nfe": budget or 20, "run_dir": f"/nowhere/{label}",
           "scores": {"clip-score": score, "judge": score}, "agrees": {"judge": score > 0}}
    row.update(extra)
    return row


def test_rows_of_two_models_sharing_verifier_names_are_never_pooled(tmp_path: Path) -> None:
    from noisesearch.bench.outputs import summary_markdown, table, write_outputs

    rows = []
    for model, value in (("hf:a", 1.0), ("hf:b", -1.0)):  # two SD models, both with clip-score
        for label in (0, 1):
            rows += [_row(model, "baseline:default", None, label, value / 2),
                     _row(model, "random", 40, label, value)]
    entries = table(rows)
    assert {(e["model"], e["strategy"]) for e in entries} == {
        (m, s) for m in ("hf:a", "hf:b") for s in ("random", "baseline:default")}
    for e in entries:  # each over its own model's two rows only
        sign = 1 if e["model"] == "hf:a" else -1
        assert e["evaluator_stat"].n == 2
        assert e["evaluator_stat"].mean == sign * (0.5 if e["baseline"] else 1.0)
        assert e["accuracy"] == (1.0 if sign > 0 else 0.0)
    summary = summary_markdown(rows, entries)
    assert "## Model hf:a" in summary and "## Model hf:b" in summary
    block_a = summary.split("## Model hf:a")[1].split("## Model hf:b")[0]
    assert "-1.0000" not in block_a and "-0.5000" not in block_a  # nothing of model b
    write_outputs(tmp_path, rows)
    page = (tmp_path / "report.html").read_text()
    assert "Model hf:a" in page and "Model hf:b" in page
    assert {p.name for p in tmp_path.iterdir()} >= {"scaling-judge.png", "hacking.png"}


def test_accuracy_is_each_evaluators_own_and_old_rows_read_as_the_first_evaluators() -> None:
    from noisesearch.bench.outputs import table

    both = ["judge", "contrast"]
    rows = [_row("digits", "random", 40, 0, 1.0, evaluators=both, agrees={"judge": True, "contrast": None}),
            _row("digits", "random", 40, 1, 1.0, evaluators=both, agrees={"judge": False, "contrast": None}),
            _row("digits", "random", 40, 2, 1.0, evaluators=both, agrees=True)]  # an earlier bench's row
    accuracy = {e["evaluator"]: e["accuracy"] for e in table(rows)}
    assert accuracy == {"judge": 2 / 3, "contrast": None}
    for row in rows:
        row["evaluators"] = ["contrast", "judge"]  # the old row's bool is now contrast's
    accuracy = {e["evaluator"]: e["accuracy"] for e in table(rows)}
    assert accuracy == {"contrast": 1.0, "judge": 1 / 2}


TEST_PLUGIN = """
    from noisesearch import hookimpl
    from noisesearch_builtin.models.digits import DigitsModel

    class Dim:
        '''Darkness of the image; says "label 0" for every image.'''

        def score(self, images, condition, trajectory=None):
            return 1.0 - images.mean(dim=(1, 2, 3))

        def predict(self, images):
            import torch
            return torch.zeros(images.shape[0], dtype=torch.long)

    class Bright:
        '''Brightness of the image; no verdict.'''

        def score(self, images, condition, trajectory=None):
            return images.mean(dim=(1, 2, 3))

    @hookimpl
    def register_verifiers(register):
        register("test-dim", Dim, description="darkness")
        register("test-bright", Bright, description="brightness")

    @hookimpl
    def register_models(register):
        register("digits-twin", DigitsModel, description="the digits model again")
"""


@pytest.fixture
def test_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two cheap evaluators and a second model sharing the digits model's verifiers."""
    from hand_plugins import install_plugin

    from noisesearch.plugins import LOAD_PLUGINS_ENV

    folder = tmp_path / "plugin"
    folder.mkdir()
    install_plugin(folder, monkeypatch, "test-bench", TEST_PLUGIN)
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "test-bench")


def test_a_bench_of_two_models_sharing_verifiers_has_a_table_and_panels_per_model(
        tmp_path: Path, test_plugin: None) -> None:
    result = run_bench(small_grid(tmp_path / "b", models=["digits", "digits-twin"],
                                  strategies=[StrategySpec("random")], baselines=["default"]))
    assert not result.failed and len(result.rows) == 2 * 2 * 2
    summary = (result.folder / "summary.md").read_text()
    assert summary.count("## Model ") == 2
    for model in ("digits", "digits-twin"):
        table_ = summary.split(f"## Model {model}\n")[1].split("\n\n")[0]
        lines = [line for line in table_.splitlines() if line.startswith("| digits-classifier")]
        assert len(lines) == 2  # random and the default baseline at 40 NFEs, once each
        assert all(line.split(" | ")[4] == "2" for line in lines)  # n: this model's 2 labels only
    page = (result.folder / "report.html").read_text()
    assert "<h3>Model digits</h3>" in page and "<h3>Model digits-twin</h3>" in page
    assert "<tr><th>models</th><td>digits, digits-twin</td></tr>" in page


def test_each_evaluator_judges_every_winner_the_same_way_whatever_their_order(
        tmp_path: Path, test_plugin: None) -> None:
    from noisesearch.bench.outputs import table

    judges = ["digits-evaluator", "test-dim", "test-bright"]
    benches = {}
    for order in (judges, judges[::-1]):
        result = run_bench(small_grid(tmp_path / "-".join(order), strategies=[StrategySpec("random")],
                                      budgets=[40, 80], baselines=["default", "stochastic"],
                                      evaluators=order))
        assert not result.failed
        benches[tuple(order)] = result
    first, second = benches.values()
    a, b = ({(r["strategy"], r["budget"], r["label"]): r for r in result.rows} for result in (first, second))
    assert a.keys() == b.keys()
    for cell in a:  # bit for bit: every evaluator judged the winner alone, after the search
        assert a[cell]["scores"] == b[cell]["scores"], cell
        assert a[cell]["agrees"] == b[cell]["agrees"], cell
    for row in first.rows:
        assert set(row["agrees"]) == set(judges) and row["agrees"]["test-bright"] is None
        assert row["agrees"]["test-dim"] == (row["label"] == 0)
    for result in (first, second):
        accuracy = {(e["evaluator"], e["strategy"], e["budget"]): e["accuracy"] for e in table(result.rows)}
        labels = [r["label"] for r in result.rows if r["strategy"] == "random" and r["budget"] == 40]
        assert accuracy[("test-dim", "random", 40)] == labels.count(0) / len(labels)
        assert accuracy[("test-bright", "random", 40)] is None
        agreed = [r["agrees"]["digits-evaluator"] for r in result.rows
                  if r["strategy"] == "random" and r["budget"] == 40]
        assert accuracy[("digits-evaluator", "random", 40)] == sum(agreed) / len(agreed)
    page = (first.folder / "report.html").read_text()
    assert "(digits-evaluator, test-dim, test-bright)" in page  # hacking.png names its evaluators


def test_summary_and_report_define_the_baselines_and_show_the_grid_and_nfes_used(tmp_path: Path) -> None:
    import html
    import re

    from noisesearch.bench.outputs import report_html, summary_markdown, table

    rows = [_row("digits", "random", 80, 0, 1.0),
            _row("digits", "baseline:default", None, 0, 0.5),
            _row("digits", "baseline:more-steps", 80, 0, 0.5),
            _row("digits", "baseline:stochastic", 80, 0, 0.7, nfe=70)]
    entries = table(rows)
    summary = summary_markdown(rows, entries)
    assert "Baselines spend the same NFEs" not in summary
    for label in ("baseline:default", "baseline:more-steps", "baseline:stochastic"):
        assert sum(line.startswith(f"- `{label}`: ") for line in summary.splitlines()) == 1
    assert "budget-free" in summary and "- models: digits" in summary and "- seeds: 0" in summary
    page = report_html(tmp_path, rows, entries, [], {"prompts": "model", "limit": 1, "solver": "ddim"})
    table_ = page[page.index("id='summary'"):]
    headers = [html.unescape(h) for h in re.findall(r"<th>([^<]*)</th>", table_[:table_.index("</tr>")])]
    assert len(set(headers)) == len(headers) and "evaluator" not in headers  # no two alike
    assert {"held-out evaluator", "searched verifier", "NFEs used"} <= set(headers)
    assert page.index("id='grid'") < page.index("id='summary'")  # the grid at the top
    assert "<td>70.0</td>" in page  # the stochastic baseline's NFEs used, not its budget
    assert "<td>20.0</td>" in page  # the default baseline's one sample at budget 80
    assert "Cells (the first" not in page
    many = [_row("digits", "random", 80, i, 1.0) for i in range(2001)]
    page = report_html(tmp_path, many, [], [])
    assert "Cells (the first 2000 of 2001" in page and page.count("<li><code>") == 2000


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "swallowed"])
def test_ctrl_c_during_a_bench_is_told_once(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from noisesearch import cli, interrupts
    from noisesearch.bench import runner

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - Ctrl-C mid-bench
        interrupts._state["requested"] = True
        if how == "KeyboardInterrupt":
            raise KeyboardInterrupt
        raise RuntimeError("a library turned the Ctrl-C into this")

    monkeypatch.setattr(interrupts, "install", lambda: None)
    monkeypatch.setitem(interrupts._state, "requested", False)
    monkeypatch.delitem(cli._state, "told", raising=False)
    monkeypatch.setattr(runner, "run_bench", interrupted)
    monkeypatch.setattr(sys, "argv", ["noisesearch", "bench", "--budget", "40", "--limit", "1",
                                      "-o", str(tmp_path / "b"), "-q"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert err.count("Interrupted") == 1, err
    assert "run the same command again" in err and "Traceback" not in err


def test_results_csv_has_one_verdict_column_per_evaluator() -> None:
    from noisesearch.bench.store import to_csv

    rows = [{"key": "a", "evaluators": ["judge", "contrast"], "agrees": {"judge": True, "contrast": None},
             "scores": {"judge": 0.5}},
            {"key": "b", "evaluators": ["judge"], "agrees": False}]  # a row of an earlier bench
    header, first, second = [line.split(",") for line in to_csv(rows).splitlines()]
    assert "agrees" not in header and {"agrees:judge", "agrees:contrast"} <= set(header)
    judge, contrast = header.index("agrees:judge"), header.index("agrees:contrast")
    assert (first[judge], first[contrast], second[judge], second[contrast]) == ("True", "", "False", "")
