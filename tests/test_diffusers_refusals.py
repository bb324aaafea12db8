"""Refusals of diffusers runs while planning, before any weights load and before any run folder.

- ``--solver native`` with a scheduler that cannot restart mid-path (PNDM, as SD 1.5 ships it)
  and a strategy that solves from mid-path states (paths, SMC, pruning);
- ``--steps`` beyond what the scheduler can run: more than its training timesteps, or (SD's
  "leading" spacing with ``steps_offset`` 1) a grid that would start at timestep T;
- a ``dtype`` name that is none;
- a negative prompt that no branch reads (guidance scale <= 1, FLUX.1 without true CFG), and
  FLUX.1's true CFG without a negative prompt.

On the tiny pipelines of ``tests/diffusers_tiny.py``; planning never builds the model here (its
``_load`` is replaced by a failure), except for the pipelines already in memory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import invoke, refused
from diffusers_tiny import build, registries_with_brightness

import noisesearch
from noisesearch import ConfigError
from noisesearch.api import plan
from noisesearch.config import RunConfig
from noisesearch.plugins import Registries
from noisesearch_builtin.models.diffusers.base import DiffusersModel
from noisesearch_builtin.models.diffusers.stable_diffusion import StableDiffusionModel

PROMPT = "a red apple"

pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def registries() -> Registries:
    return registries_with_brightness()


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a pipeline from a folder fails the test: every refusal here comes first."""
    def load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the pipeline's weights were loaded before the refusal")

    monkeypatch.setattr(DiffusersModel, "_load", load)


@pytest.fixture(scope="module")
def sd_pndm(tiny: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD folder with the scheduler SD 1.5 ships: PNDM, skip_prk_steps."""
    folder = tmp_path_factory.mktemp("pndm") / "sd-pndm"
    shutil.copytree(tiny("sd"), folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update({"_class_name": "PNDMScheduler", "skip_prk_steps": True})
    config_file.write_text(json.dumps(config))
    return folder


def _refused(registries: Registries, output: Path, **options: Any) -> ConfigError:
    """The ConfigError that ``search`` raises, having written nothing."""
    options.setdefault("verifiers", ["test-brightness"])
    with pytest.raises(ConfigError) as info:
        noisesearch.search(registries=registries, output=str(output), **options)
    assert not output.exists()
    return info.value


# -- D1: a native scheduler that cannot restart mid-path -------------------------------------------
@pytest.mark.parametrize("strategy", ["paths", "smc", "pruning", "stochastic"])
def test_native_pndm_with_a_mid_path_strategy_is_refused_before_loading(
    strategy: str, tiny: Callable[[str], Path], registries: Registries, tmp_path: Path, no_loading: None
) -> None:
    error = _refused(registries, tmp_path / "run", model=f"hf:{tiny('sd')}", prompt=PROMPT,
                     solver="native", model_options={"scheduler": "PNDM"}, strategy=strategy,
                     steps=4, budget_nfe=100)
    assert error.field == "strategy" and "mid-path" in str(error) and "PNDM" in str(error)


def test_cli_sd15_like_folder_with_smc_exits_2_without_a_run_folder(sd_pndm: Path, tmp_path: Path) -> None:
    """SD 1.5's own scheduler (from the folder's scheduler_config.json) with --solver native."""
    result = invoke("run", "--model", f"hf:{sd_pndm}", "--prompt", PROMPT, "--solver", "native",
                    "--strategy", "smc", "--steps", "4", "--budget-nfe", "100",
                    "--verifier", "aesthetic", "--output", str(tmp_path / "run"))
    refused(result, 2, "strategy:")
    assert "loading model" not in result.output and not (tmp_path / "run").exists()


def test_native_pndm_plans_whole_path_strategies_and_a_restartable_one_plans_all(
    sd_pndm: Path, tiny: Callable[[str], Path], registries: Registries, no_loading: None
) -> None:
    def config(folder: Path, strategy: str) -> RunConfig:
        return RunConfig(model=f"hf:{folder}", prompt=PROMPT, solver="native", strategy=strategy,
                         steps=4, budget_nfe=100, verifiers=["test-brightness"])

    for strategy in ("random", "zero-order", "evolution"):  # evolution: whole solves under native
        plan(config(sd_pndm, strategy), registries, check_output=False)
    plan(config(tiny("sd"), "smc"), registries, check_output=False)  # DDIM restarts
    # the core's solvers never use the scheduler
    plan(RunConfig(model=f"hf:{sd_pndm}", prompt=PROMPT, strategy="smc", steps=4, budget_nfe=100,
                   verifiers=["test-brightness"]), registries, check_output=False)


def test_a_pndm_pipeline_in_memory_with_smc_is_refused_before_sampling(
    registries: Registries, tmp_path: Path
) -> None:
    from diffusers import PNDMScheduler

    pipe = build("sd")
    pipe.scheduler = PNDMScheduler.from_config({**pipe.scheduler.config, "skip_prk_steps": True})
    error = _refused(registries, tmp_path / "run", model=pipe, prompt=PROMPT, solver="native",
                     strategy="smc", steps=4, budget_nfe=100)
    assert error.field == "strategy"


# -- D2: more steps than the scheduler can run ---------------------------------------------------
@pytest.mark.parametrize(("family", "steps", "bound", "solver"), [
    ("sd", 1001, 999, "ddim"),  # beyond the 1000 training timesteps
    ("sd", 1000, 999, "ddim"),  # "leading" + steps_offset 1: the grid would start at timestep 1000
    ("sd", 1001, 999, "native"),
    ("dit", 1001, 1000, "ddim"),  # steps_offset 0: all 1000 timesteps can run
])
def test_steps_beyond_the_schedulers_training_timesteps_are_refused_before_loading(
    family: str, steps: int, bound: int, solver: str, tiny: Callable[[str], Path],
    registries: Registries, tmp_path: Path, no_loading: None,
) -> None:
    condition = {"label": 3} if family == "dit" else {"prompt": PROMPT}
    error = _refused(registries, tmp_path / "run", model=f"hf:{tiny(family)}", solver=solver,
                     steps=steps, candidates=1, **condition)
    assert error.field == "steps" and f"at most {bound}" in str(error)


def test_the_largest_steps_that_fit_are_planned(
    tiny: Callable[[str], Path], registries: Registries, no_loading: None
) -> None:
    for family, steps, condition in (("sd", 999, {"prompt": PROMPT}), ("dit", 1000, {"label": 3})):
        plan(RunConfig(model=f"hf:{tiny(family)}", steps=steps, candidates=1,
                       verifiers=["test-brightness"], **condition), registries, check_output=False)
    plan(RunConfig(model=f"hf:{tiny('sd3')}", prompt=PROMPT, steps=1001, candidates=1,  # flow: no bound
                   verifiers=["test-brightness"]), registries, check_output=False)


def test_cli_steps_1001_exits_2_without_loading_or_a_run_folder(
    tiny: Callable[[str], Path], tmp_path: Path
) -> None:
    result = invoke("run", "--model", f"hf:{tiny('sd')}", "--prompt", PROMPT, "--steps", "1001",
                    "--candidates", "1", "--verifier", "aesthetic", "--output", str(tmp_path / "run"))
    refused(result, 2, "steps:", "at most 999")
    assert "loading model" not in result.output and not (tmp_path / "run").exists()


def test_steps_beyond_the_bound_are_refused_for_a_pipeline_in_memory_and_by_its_grids(
    registries: Registries, tmp_path: Path
) -> None:
    """Planning reads the bound from the scheduler object; the grids refuse it too (a backstop)."""
    pipe = build("sd")
    error = _refused(registries, tmp_path / "run", model=pipe, prompt=PROMPT, steps=1001, candidates=1)
    assert error.field == "steps"
    model = StableDiffusionModel.from_pipeline(pipe)
    assert model.max_steps == 999
    for steps in (1000, 1001):
        with pytest.raises(ConfigError, match="^steps: "):
            model.levels(steps)
        with pytest.raises(ConfigError, match="^steps: "):
            model.native_solver(steps)
    assert model.levels(999)[0] == pytest.approx(1.0)  # timestep 999: the first trained level


def test_max_steps_follows_diffusers_ddim_grid() -> None:
    """The bound is where DDIM's first timestep stays below T (diffusers' own DDIM step fails
    beyond: alphas_cumprod[T])."""
    from diffusers import DDIMScheduler

    from noisesearch_builtin.models.diffusers.base import max_steps

    for spacing, offset in (("leading", 1), ("leading", 0), ("leading", 7), ("trailing", 1), ("linspace", 1)):
        config = {"num_train_timesteps": 1000, "timestep_spacing": spacing, "steps_offset": offset}
        bound = max_steps(config)
        ddim = DDIMScheduler(**config)
        ddim.set_timesteps(bound)
        assert int(ddim.timesteps.max()) < 1000
        if bound < 1000:
            ddim.set_timesteps(bound + 1)
            assert int(ddim.timesteps.max()) >= 1000
    assert max_steps({"prediction_type": "epsilon"}) is None


# -- D10: a dtype name that is none --------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "int8"])
def test_an_unknown_dtype_is_refused_before_loading(
    dtype: str, tiny: Callable[[str], Path], registries: Registries, tmp_path: Path, no_loading: None
) -> None:
    error = _refused(registries, tmp_path / "run", model=f"hf:{tiny('sd')}", prompt=PROMPT,
                     model_options={"dtype": dtype}, candidates=1, steps=2)
    assert error.field == "dtype" and "float32, float16, bfloat16" in str(error)


def test_cli_dry_run_refuses_an_unknown_dtype(tiny: Callable[[str], Path]) -> None:
    result = invoke("run", "--model", f"hf:{tiny('sd')}", "--prompt", PROMPT, "--model-opt",
                    "dtype=float64", "--verifier", "aesthetic", "--candidates", "1", "--dry-run")
    refused(result, 2, "dtype:", "float64")
    for accepted in ("fp16", "bfloat16", "auto"):
        ok = invoke("run", "--model", f"hf:{tiny('sd')}", "--prompt", PROMPT, "--model-opt",
                    f"dtype={accepted}", "--verifier", "aesthetic", "--candidates", "1", "--dry-run")
        assert ok.exit_code == 0, ok.output


# -- a negative prompt no branch reads, and true CFG without one -----------------------------------
@pytest.mark.parametrize(("family", "model_options", "negative", "field"), [
    ("sd", {"guidance_scale": 1.0}, "blurry", "negative_prompt"),
    ("sdxl", {"guidance_scale": 0.5}, "blurry", "negative_prompt"),
    ("flux", {}, "blurry", "negative_prompt"),  # FLUX.1 reads it only with true CFG
    ("flux", {"true_cfg_scale": 2.0}, None, "true_cfg_scale"),  # true CFG with nothing to guide against
])
def test_an_option_without_effect_on_the_negative_prompt_is_refused_before_loading(
    family: str, model_options: dict[str, Any], negative: str | None, field: str,
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path, no_loading: None,
) -> None:
    error = _refused(registries, tmp_path / "run", model=f"hf:{tiny(family)}", prompt=PROMPT,
                     negative_prompt=negative, model_options=model_options, candidates=1, steps=2)
    assert error.field == field


def test_guided_negative_prompts_plan(
    tiny: Callable[[str], Path], registries: Registries, no_loading: None
) -> None:
    for family, options in (("sd", {}), ("sd3", {"guidance_scale": 3.0}), ("flux", {"true_cfg_scale": 2.0})):
        plan(RunConfig(model=f"hf:{tiny(family)}", prompt=PROMPT, negative_prompt="blurry",
                       model_options=options, verifiers=["test-brightness"], candidates=1, steps=2),
             registries, check_output=False)


def test_a_pipeline_in_memory_refuses_a_negative_prompt_it_would_not_read(registries: Registries) -> None:
    with pytest.raises(ConfigError) as info:
        noisesearch.search(model=build("sd"), prompt=PROMPT, negative_prompt="blurry",
                           registries=registries, model_options={"guidance_scale": 1.0},
                           verifiers=["test-brightness"], candidates=1, steps=2)
    assert info.value.field == "negative_prompt" and "guidance_scale 1" in str(info.value)
