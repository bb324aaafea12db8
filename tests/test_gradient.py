"""The ``gradient`` strategy and the engine's differentiable evaluation (``noisesearch.gradients``):
exact gradients, budget (forward and backward NFEs), replay and re-optimisation, bad options,
non-differentiable verifiers refused, and the differentiable paths of the verifiers."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from scripts import load_benchmark
from typer.testing import CliRunner

import noisesearch
from noisesearch import Condition
from noisesearch.api import replay_run
from noisesearch.cli import build_app
from noisesearch.engine import Budget, Engine
from noisesearch.gradients import BACKWARD_NFE_FACTOR
from noisesearch.plugins import build_registries
from noisesearch.results import load_best
from noisesearch.scoring import Scorer
from noisesearch.testing import GaussianModel, run_strategy
from noisesearch_builtin.search.gradient import GradientSearch, norm_log_likelihood_grad, reoptimise


class DifferentiableBrightness:
    """Mean brightness, with its differentiable path (the test-brightness verifier has none)."""

    requires: ClassVar[frozenset[str]] = frozenset()
    differentiable: ClassVar[bool] = True

    def score(self, images: torch.Tensor, condition: Condition,
              trajectory: Mapping[float, Any] | None = None) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))

    def score_with_grad(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def registries() -> Any:
    return build_registries()


# -- the math ------------------------------------------------------------------------------------


def test_the_norm_regulariser_is_the_gradient_of_the_chi_log_likelihood() -> None:
    z = torch.randn(3, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.3
    dims = z[0].numel()
    leaf = z.clone().requires_grad_(True)
    norms = leaf.flatten(1).norm(dim=1)
    (by_autograd,) = torch.autograd.grad(((dims - 1) * norms.log() - norms.square() / 2).sum(), leaf)
    assert torch.allclose(norm_log_likelihood_grad(z, dims), by_autograd, atol=1e-12)
    shell = z / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * math.sqrt(dims - 1)
    assert norm_log_likelihood_grad(shell, dims).abs().max() < 1e-9  # no pull on the shell


def test_the_engine_gradient_is_the_gradient_of_the_objective() -> None:
    """Against central differences of the objective computed the ordinary way (the engine's plain
    solve, decode and score under inference mode): the Gaussian model's sampler is affine in the
    noise, so the directional derivative is exact up to float32 rounding."""
    from noisesearch.sampling import solve

    model = GaussianModel(size=8, std=0.5)
    engine = Engine(model, Condition(), Scorer({"b": DifferentiableBrightness()}), Budget(nfe=100),
                    model.schedule.levels(4))
    engine._prepared = model.prepare(Condition())
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64)
    levels = model.schedule.levels(2)
    result = engine.gradient(z, levels, {"b": 1.0})

    def objective(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            latents = solve(lambda y, s: model.denoise(y, s, None), x, model.schedule, levels).x
            return model.decode(latents).clamp(0, 1).mean(dim=(1, 2, 3))  # float64

    assert torch.allclose(result.objective, objective(z).float(), atol=1e-6)
    assert result.scores["b"] == pytest.approx(result.objective.tolist())
    for _ in range(3):
        direction = torch.randn(z.shape, generator=generator, dtype=torch.float64)
        step = 1e-4
        numeric = (objective(z + step * direction) - objective(z - step * direction)) / (2 * step)
        analytic = (result.grad.double() * direction).flatten(1).sum(dim=1)
        assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-8)
    assert result.grad.abs().min() >= 0 and result.grad.abs().max() > 0
    # 2 forward NFEs per row, BACKWARD_NFE_FACTOR times that for the backward pass
    assert engine.usage.nfe == 3 * 2 * (1 + BACKWARD_NFE_FACTOR)
    assert engine.usage.backward_nfe == 3 * 2 * BACKWARD_NFE_FACTOR


def test_an_out_of_memory_halves_the_differentiable_chunks_and_gives_the_same_gradients() -> None:
    from test_engine import SmallMemoryModel

    small = SmallMemoryModel(limit=2)
    run = run_strategy(GradientSearch(iterations=2, restarts=5, batch=5), Budget(nfe=10_000),
                       model=small, verifier=DifferentiableBrightness(), steps=2, batch_size=1)
    reference = run_strategy(GradientSearch(iterations=2, restarts=5, batch=5), Budget(nfe=10_000),
                             verifier=DifferentiableBrightness(), steps=2, batch_size=1)
    assert 5 in small.refused  # 5 rows refused, then halved until they fit
    assert [c.objective for c in run.candidates] == pytest.approx(
        [c.objective for c in reference.candidates], abs=1e-6)
    assert run.usage.nfe == reference.usage.nfe


# -- budget ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("budget", "options"), [
    (60, {"iterations": 2}), (50, {"iterations": 4}), (13, {"iterations": 8}),
    (200, {"restarts": 3, "iterations": 2}), (7, {}),
])
def test_the_budget_is_planned_first_and_never_exceeded(
    budget: int, options: dict[str, Any], registries: Any
) -> None:
    result = noisesearch.search(model="digits", label=5, strategy="gradient", budget_nfe=budget, steps=2,
                                strategy_options=options, write=False, registries=registries)
    report = result.strategy_report["gradient"]
    forward, backward = report["forward_nfe_per_step"], report["backward_nfe_per_step"]
    assert (forward, backward) == (2, 2 * BACKWARD_NFE_FACTOR)
    restarts, iterations = report["restarts"], report["iterations"]
    expected = GradientSearch.nfe_cost(forward + backward, 2, iterations, restarts)
    assert result.usage.nfe == expected <= budget
    assert result.usage.candidates == restarts
    assert result.usage.backward_nfe == restarts * iterations * backward
    if "restarts" in options:
        assert restarts == options["restarts"]
    elif budget >= GradientSearch.nfe_cost(forward + backward, 2, iterations, 1):  # as many as fit
        assert budget - result.usage.nfe < GradientSearch.nfe_cost(forward + backward, 2, iterations, 1)
    elif budget >= 2 + forward + backward:  # not one restart of the asked iterations: fewer
        assert iterations == (budget - 2) // (forward + backward) < options["iterations"]
    else:  # not one gradient step: plain samples of the seeds' noises
        assert iterations == 0 and restarts == budget // 2
        assert result.best.recipe["start"]["kind"] == "seed" and result.usage.backward_nfe == 0


def test_gradient_ascent_improves_the_verifier_on_digits(registries: Any) -> None:
    result = noisesearch.search(model="digits", label=8, strategy="gradient", budget_nfe=300, steps=2,
                                strategy_options={"restarts": 2, "batch": 2, "iterations": 10},
                                write=False, registries=registries)
    trace = result.strategy_report["gradient"]["objective_by_iteration"][0]
    assert trace[-1] > trace[0] + 0.1  # log p(label) rises along the ascent


# -- the command line, replay, re-optimisation --------------------------------------------------


def test_cli_digits_reports_forward_and_backward_nfes_and_replays_bit_for_bit(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), [
        "run", "--model", "digits", "--label", "3", "--strategy", "gradient", "--steps", "2",
        "--budget-nfe", "120", "--strategy-opt", "iterations=4", "--strategy-opt", "batch=2",
        "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    usage = run["usage"]
    assert usage["nfe"] == usage["forward_nfe"] + usage["backward_nfe"] <= 120
    assert usage["backward_nfe"] == BACKWARD_NFE_FACTOR * 4 * 2 * run["usage"]["candidates"]
    start = run["best"]["recipe"]["start"]
    assert start["kind"] == "gradient" and start["iterations"] == 4 and start["levels"] == [1.0, 0.5, 0.0]
    assert {"seed", "lr", "regulariser", "rows", "row"} <= set(start)
    outcome = replay_run(out)
    assert outcome.identical, outcome.max_abs_diff


class _Reoptimise:
    """A strategy that re-runs a recorded optimisation, then records one candidate."""

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.noise: torch.Tensor | None = None

    def run(self, context: Any) -> None:
        self.noise = reoptimise(context, self.start)
        context.evaluate([{"kind": "seed", "seed": 0}])


def test_the_recorded_optimisation_re_runs_bit_for_bit(tmp_path: Path, registries: Any) -> None:
    out = tmp_path / "run"
    noisesearch.search(model="digits", label=7, strategy="gradient", budget_nfe=400, steps=2, seed=3,
                       strategy_options={"restarts": 3, "batch": 3, "iterations": 5},
                       output=str(out), registries=registries)
    run = json.loads((out / "run.json").read_text())
    saved = load_best(out / "best_noise.safetensors")["noise"]
    model = registries.models.create("digits")
    scorer = Scorer({"digits-classifier": registries.verifiers.create("digits-classifier")})
    engine = Engine(model, Condition(label=7), scorer, Budget(nfe=10_000), model.schedule.levels(2))
    again = _Reoptimise(run["best"]["recipe"]["start"])
    engine.run(again)
    assert again.noise is not None and torch.equal(again.noise, saved)


def test_a_crashed_gradient_run_resumes_to_the_uninterrupted_result(tmp_path: Path, monkeypatch: Any) -> None:
    """Gradient steps are not journaled (recomputed, deterministic on the CPU); the candidates'
    evaluations are, so the resumed run ends exactly as an uninterrupted one."""
    from noisesearch.api import resume_run
    from noisesearch_builtin.verifiers import digits_classifiers

    options = {"restarts": 4, "batch": 2, "iterations": 2}
    out = tmp_path / "run"
    original = digits_classifiers.DigitsClassifier.score
    calls = {"n": 0}

    def flaky(self: Any, images: torch.Tensor, condition: Condition, trajectory: Any = None) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch of candidates
            raise RuntimeError("disk on fire")
        return original(self, images, condition, trajectory)

    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", flaky)
    with pytest.raises(noisesearch.NoiseSearchError, match="disk on fire"):
        noisesearch.search(model="digits", label=6, strategy="gradient", strategy_options=options, steps=2,
                           budget_nfe=1000, seed=1, output=str(out))
    monkeypatch.setattr(digits_classifiers.DigitsClassifier, "score", original)
    resumed = resume_run(out)
    reference = noisesearch.search(model="digits", label=6, strategy="gradient", strategy_options=options,
                                   steps=2, budget_nfe=1000, seed=1, write=False)
    assert resumed.best.recipe == reference.best.recipe
    assert [c.objective for c in resumed.top] == [c.objective for c in reference.top]
    assert resumed.usage.nfe == reference.usage.nfe
    assert resumed.usage.backward_nfe == reference.usage.backward_nfe


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "field"), [
    ("lr=0", "gradient.lr"), ("lr=-0.5", "gradient.lr"), ("iterations=0", "gradient.iterations"),
    ("steps=5", "gradient.steps"), ("batch=0", "gradient.batch"),
])
def test_bad_options_exit_2_naming_the_option_before_anything_is_made(
    option: str, field: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), [
        "run", "--model", "digits", "--strategy", "gradient", "--strategy-opt", option, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert field in result.output and not out.exists()


def test_a_non_differentiable_verifier_is_refused_before_loading(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), [
        "run", "--model", "shapes", "--prompt", "a red circle", "--verifier", "shapes-judge",
        "--strategy", "gradient", "-o", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "'shapes-judge' is not differentiable" in text
    for name in ("clip-score", "shapes-clip", "aesthetic", "digits-classifier"):
        assert name in text
    assert "loading" not in text and not out.exists()


def test_weights_must_name_differentiable_verifiers_of_the_run(registries: Any) -> None:
    with pytest.raises(noisesearch.ConfigError, match="weights"):
        noisesearch.search(model="digits", label=1, strategy="gradient", budget_nfe=50, write=False,
                           strategy_options={"weights": {"digits-evaluator": 1.0}}, registries=registries)
    with pytest.raises(noisesearch.IncompatibleError, match="not differentiable"):
        noisesearch.search(model="digits", label=1, strategy="gradient", budget_nfe=50, write=False,
                           verifiers=["ensemble"], registries=registries,
                           verifier_options={"ensemble": {"members": ["digits-classifier"]}})


def test_a_weighted_sum_of_two_verifiers_is_optimised(registries: Any) -> None:
    result = noisesearch.search(
        model="digits", label=2, strategy="gradient", budget_nfe=100, steps=2, write=False,
        verifiers=["digits-classifier", "digits-evaluator"], evaluator="none", registries=registries,
        strategy_options={"weights": {"digits-classifier": 1.0, "digits-evaluator": 0.5}, "restarts": 1},
    )
    assert result.best.recipe["start"]["weights"] == {"digits-classifier": 1.0, "digits-evaluator": 0.5}
    assert result.usage.verifier_calls >= 2 * result.strategy_report["gradient"]["iterations"]


# -- differentiable verifiers -------------------------------------------------------------------


def check_differentiable(verifier: Any, images: torch.Tensor, condition: Condition,
                         flat: bool = False) -> None:
    """``score_with_grad`` is ``score`` with a graph: same values, a finite non-zero gradient
    (``flat``: zero allowed, e.g. a score clipped at 0)."""
    assert verifier.differentiable is True
    plain = verifier.score(images, condition)
    pixels = images.clone().requires_grad_(True)
    scores = verifier.score_with_grad(pixels, condition)
    assert scores.shape == (images.shape[0],)
    assert torch.allclose(scores.detach().float(), plain.float(), atol=1e-5)
    (grad,) = torch.autograd.grad(scores.sum(), pixels)
    assert torch.isfinite(grad).all() and (flat or grad.abs().sum() > 0)
    if flat:
        return
    # rows are independent: one image's score moves with its own pixels only
    (first,) = torch.autograd.grad(verifier.score_with_grad(pixels, condition)[0], pixels)
    assert first[1:].abs().max() == 0


def _images(size: int, rows: int = 3) -> torch.Tensor:
    return torch.rand(rows, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1


def test_the_digits_classifiers_are_differentiable(registries: Any) -> None:
    for name in ("digits-classifier", "digits-evaluator"):
        check_differentiable(registries.verifiers.create(name), _images(8), Condition(label=4))


def test_shapes_clip_is_differentiable(registries: Any) -> None:
    check_differentiable(registries.verifiers.create("shapes-clip", device="cpu"), _images(32),
                         Condition(prompt="two red circles"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from clip_tiny import make_tiny_files

    from noisesearch_builtin.verifiers import clip_backbone

    yield make_tiny_files(tmp_path_factory.mktemp("tiny-clip"))
    clip_backbone.clear_cache()


def test_clip_score_and_aesthetic_are_differentiable(tiny_clip: Any, registries: Any) -> None:
    from clip_tiny import TINY_CLIP

    clip = {"model": TINY_CLIP, "pretrained": str(tiny_clip.clip), "device": "cpu"}
    for scale in ("cosine", "clipscore"):  # clipscore clips negative cosines (random CLIP) at 0
        check_differentiable(registries.verifiers.create("clip-score", scale=scale, **clip), _images(40),
                             Condition(prompt="a red apple"), flat=scale == "clipscore")
    aesthetic = registries.verifiers.create("aesthetic", weights=str(tiny_clip.aesthetic), **clip)
    check_differentiable(aesthetic, _images(40), Condition())


# -- a tiny diffusers pipeline ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from diffusers_tiny import TinyFolders, plain_cpu_kernels

    with plain_cpu_kernels():  # tiny convolutions are far slower with oneDNN here
        yield TinyFolders(tmp_path_factory.mktemp("gradient-sd"))("sd")


@pytest.mark.slow
def test_gradient_search_on_a_tiny_sd_pipeline_keeps_the_budget_and_replays(
    tiny_sd: Path, tmp_path: Path, registries: Any
) -> None:
    from diffusers_tiny import IMAGE_SIZE, plain_cpu_kernels

    out = tmp_path / "run"
    with plain_cpu_kernels():
        result = noisesearch.search(
            model="hf", model_options={"path": str(tiny_sd), "height": IMAGE_SIZE, "width": IMAGE_SIZE},
            prompt="a red circle", verifiers=["shapes-clip"],
            verifier_options={"shapes-clip": {"device": "cpu"}},
            evaluator="none", strategy="gradient", steps=2, budget_nfe=40, batch_size=2,
            strategy_options={"iterations": 2, "batch": 2}, output=str(out), registries=registries,
        )
        run = json.loads((out / "run.json").read_text())
        assert result.usage.nfe <= 40 and run["usage"]["backward_nfe"] > 0
        assert run["usage"]["forward_nfe"] + run["usage"]["backward_nfe"] == run["usage"]["nfe"]
        trace = result.strategy_report["gradient"]["objective_by_iteration"][0]
        assert len(trace) == 2 and all(math.isfinite(v) for v in trace)
        outcome = replay_run(out, registries=registries)
    assert outcome.identical, outcome.max_abs_diff


def test_the_comparison_script_runs_and_keeps_equal_budgets(tmp_path: Path) -> None:
    module = load_benchmark("compare_gradient")
    threads = torch.get_num_threads()
    try:
        module.main(["--budgets", "28", "--seeds", "1", "--labels", "0", "1",
                     "--gradient-opt", "iterations=2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "gradient.json").read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["gradient", "random", "zero-order"]
    assert all(r["mean_nfe_spent"] == 28 and r["searches"] == 2 for r in rows)  # 2 restarts of 14
    assert rows[0]["mean_backward_nfe"] > 0 == rows[1]["mean_backward_nfe"]
    assert "| gradient | 28 |" in (tmp_path / "gradient.md").read_text()


@pytest.mark.slow
def test_img2img_gradients_start_from_the_noised_image(tiny_sd: Path, tmp_path: Path) -> None:
    """With an init image the differentiated sampler starts where the run's does (the image's
    latents noised by the optimised noise): before any step, the objective equals the plain
    sample's (the baseline of the same first seed); the winner replays bit for bit."""
    from diffusers_tiny import IMAGE_SIZE, plain_cpu_kernels, registries_with_brightness
    from PIL import Image

    image = tmp_path / "init.png"
    pixels = torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.to(torch.uint8).numpy(), mode="RGB").save(image)
    registries = registries_with_brightness()
    out = tmp_path / "run"
    with plain_cpu_kernels():
        result = noisesearch.search(
            model=f"hf:{tiny_sd}", prompt="a red apple", verifiers=["test-brightness"], evaluator="none",
            model_options={"init_image": str(image), "strength": 0.6, "guidance_scale": 3.0},
            steps=4, budget_nfe=40, batch_size=1, strategy="gradient", output=str(out),
            strategy_options={"iterations": 2, "batch": 1, "restarts": 1}, registries=registries,
        )
        trace = result.strategy_report["gradient"]["objective_by_iteration"][0]
        assert trace[0] == pytest.approx(result.baseline.scores["test-brightness"], abs=1e-5)
        outcome = replay_run(out, registries=registries)
    assert outcome.identical, outcome.max_abs_diff
