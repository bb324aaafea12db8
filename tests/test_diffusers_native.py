"""``--solver native``: a diffusers pipeline's own scheduler as the solver.

On tiny random pipelines (``tests/diffusers_tiny.py``) loaded through the ``hf`` model: for each
scheduler, noisesearch's native solve from given noise equals the pipeline run with that scheduler
and the same ``latents=`` within ``ATOL``; a solve split at a mid-path level equals the whole solve
for single-step schedulers and not for multistep ones (their history restarts), whose resumed part
equals diffusers' scheduler begun fresh at that step; stochastic
schedulers take their step noise from per-row seeds, so that the pipeline given the same generators
agrees and a replay is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers_tiny import IMAGE_SIZE, registries_with_brightness
from typer.testing import CliRunner

import noisesearch
from noisesearch import Condition, ConfigError
from noisesearch.api import plan
from noisesearch.cli import build_app
from noisesearch.config import RunConfig
from noisesearch.plugins import Registries
from noisesearch.sampling import draw_noise, resolve_solver, solve, solver_nfe
from noisesearch_builtin.models.diffusers.flux import FluxModel

ATOL = 1e-4
PROMPT = "a photo of a red apple on a wooden table"
STEPS = 4

#: case -> (tiny family, scheduler class, scheduler options)
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sd-ddim-leading": ("sd", "DDIMScheduler", {}),
    "sd-ddim-trailing": ("sd", "DDIMScheduler", {"timestep_spacing": "trailing"}),
    "sd-ddim-linspace": ("sd", "DDIMScheduler", {"timestep_spacing": "linspace"}),
    "sd-dpm++2m": ("sd", "DPMSolverMultistepScheduler", {}),
    "sd-dpm++2m-karras": ("sd", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "sd-unipc": ("sd", "UniPCMultistepScheduler", {}),
    "sd-euler": ("sd", "EulerDiscreteScheduler", {}),
    "sd-euler-trailing": ("sd", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "sd-euler-ancestral": ("sd", "EulerAncestralDiscreteScheduler", {}),
    "sd-heun": ("sd", "HeunDiscreteScheduler", {}),
    "sd-v-dpm++2m": ("sd-v", "DPMSolverMultistepScheduler", {}),
    "sd-v-euler": ("sd-v", "EulerDiscreteScheduler", {}),
    "sd-v-unipc": ("sd-v", "UniPCMultistepScheduler", {}),
    "sdxl-euler": ("sdxl", "EulerDiscreteScheduler", {}),  # SD-XL's shipped scheduler
    "sdxl-dpm++2m-karras": ("sdxl", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "sdxl-dpm++2m": ("sdxl", "DPMSolverMultistepScheduler", {}),
    "sdxl-unipc": ("sdxl", "UniPCMultistepScheduler", {}),
    "sdxl-euler-ancestral": ("sdxl", "EulerAncestralDiscreteScheduler", {}),
    "sdxl-ddim-leading": ("sdxl", "DDIMScheduler", {}),
    "sdxl-ddim-trailing": ("sdxl", "DDIMScheduler", {"timestep_spacing": "trailing"}),
    "sdxl-ddim-linspace": ("sdxl", "DDIMScheduler", {"timestep_spacing": "linspace"}),
    "pixart-dpm++": ("pixart-sigma", "DPMSolverMultistepScheduler", {}),  # PixArt-Sigma's shipped one
    "pixart-unipc": ("pixart-sigma", "UniPCMultistepScheduler", {}),
    "pixart-euler": ("pixart-sigma", "EulerDiscreteScheduler", {}),
    "pixart-euler-ancestral": ("pixart-sigma", "EulerAncestralDiscreteScheduler", {}),
    "pixart-ddim-leading": ("pixart-sigma", "DDIMScheduler", {}),
    "pixart-ddim-trailing": ("pixart-sigma", "DDIMScheduler", {"timestep_spacing": "trailing"}),
    "pixart-ddim-linspace": ("pixart-sigma", "DDIMScheduler", {"timestep_spacing": "linspace"}),
    "flux-flow-euler": ("flux", "FlowMatchEulerDiscreteScheduler", {}),
    "sd3-flow-euler": ("sd3", "FlowMatchEulerDiscreteScheduler", {}),
}


pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def registries() -> Registries:
    return registries_with_brightness()


def _model(registries: Registries, folder: Path, **options: Any) -> Any:
    return registries.models.create("hf", path=str(folder), height=IMAGE_SIZE, width=IMAGE_SIZE,
                                    guidance_scale=3.0, **options)


def _split_solve_setup(
    registries: Registries, folder: Path, **options: Any
) -> tuple[Any, Any, list[float], torch.Tensor, Callable[[torch.Tensor, float], torch.Tensor]]:
    """What a restart test splits: the model, its native solver and grid over STEPS, the noise
    of seed 5 and the denoiser of PROMPT."""
    model = _model(registries, folder, **options)
    solver = resolve_solver(model, "native", STEPS)
    prepared = model.prepare(Condition(prompt=PROMPT))

    def denoise(x: torch.Tensor, s: float) -> torch.Tensor:
        return model.denoise(x, s, prepared)

    return model, solver, solver.levels(STEPS), draw_noise([5], model.latent_shape), denoise


def _pipeline(folder: Path, scheduler: str, options: dict[str, Any]) -> Any:
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config, **options)
    return pipe


@pytest.mark.parametrize("case", list(CASES))
def test_native_solver_reproduces_the_pipeline_with_its_scheduler(
    case: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    family, scheduler, options = CASES[case]
    seeds = [11, 12]
    model = _model(registries, tiny(family), scheduler=scheduler, scheduler_options=options)
    solver = resolve_solver(model, "native", STEPS)
    levels = solver.levels(STEPS)
    noise = draw_noise(seeds, model.latent_shape)  # (2, C, h, w)
    prepared = model.prepare(Condition(prompt=PROMPT))
    step_seeds = [101, 102] if solver.stochastic else None
    with torch.inference_mode():
        solved = solve(lambda x, s: model.denoise(x, s, prepared), noise, model.schedule, levels,
                       solver, noise_seeds=step_seeds)
        ours = model.decode(solved.x)  # (2, 3, H, W)

    pipe = _pipeline(tiny(family), scheduler, options)
    latents = noise
    if isinstance(model, FluxModel):
        latents = pipe._pack_latents(noise, len(seeds), *model.latent_shape)
    call: dict[str, Any] = {"use_resolution_binning": False} if family == "pixart-sigma" else {}
    generator = None
    if step_seeds is not None:  # the pipeline's step noise from the same per-row generators
        generator = [torch.Generator("cpu").manual_seed(s) for s in step_seeds]
    reference = pipe(prompt=[PROMPT] * len(seeds), latents=latents, num_inference_steps=STEPS,
                     height=IMAGE_SIZE, width=IMAGE_SIZE, guidance_scale=3.0, output_type="pt",
                     generator=generator, **call).images

    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
    assert reference.std() > 0.01
    calls = len(pipe.scheduler.timesteps)  # network calls of the pipeline (Heun: two per step)
    assert solved.nfe == solver.nfe(levels) == solver_nfe(model.schedule, levels, solver) == calls
    assert len(levels) == STEPS + 1


#: DiT's compatible schedulers checked against its pipeline, with their options. Euler and Euler
#: ancestral are not: DiTPipeline (diffusers 0.42) passes ``scale_model_input``'s output, not the
#: sample, to ``scheduler.step``, so for schedulers whose input scaling is not the identity (the
#: ``x0 + sigma eps`` ones) every step starts from a state divided by ``sqrt(sigma^2 + 1)``: its
#: output is not a sample of the model, and ours (which steps from the sample, as every other
#: pipeline does) differs from it by up to 0.22 on the tiny pipeline. Euler ancestral would also
#: need the step noise of torch's global generator (the pipeline does not pass its generator).
DIT_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim-leading": ("DDIMScheduler", {}),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    "ddim-linspace": ("DDIMScheduler", {"timestep_spacing": "linspace"}),
}


@pytest.mark.parametrize("case", list(DIT_CASES))
def test_native_solver_reproduces_the_dit_pipeline(
    case: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    """DiT's pipeline draws its own latents (no ``latents=``) and does not scale them by
    ``init_noise_sigma`` (1 for every scheduler here)."""
    scheduler, options = DIT_CASES[case]
    model = registries.models.create("hf", path=str(tiny("dit")), guidance_scale=3.0,
                                     scheduler=scheduler, scheduler_options=options)
    solver = resolve_solver(model, "native", STEPS)
    pipe = _pipeline(tiny("dit"), scheduler, options)
    pipe.scheduler.set_timesteps(STEPS)
    assert pipe.scheduler.init_noise_sigma == 1
    noise = torch.randn((2, *model.latent_shape), generator=torch.Generator("cpu").manual_seed(5))
    prepared = model.prepare(Condition(label=207))  # golden retriever
    with torch.inference_mode():
        solved = solve(lambda x, s: model.denoise(x, s, prepared), noise, model.schedule,
                       solver.levels(STEPS), solver)
        ours = model.decode(solved.x)
    reference = pipe(class_labels=[207, 207], guidance_scale=3.0, num_inference_steps=STEPS,
                     generator=torch.Generator("cpu").manual_seed(5), output_type="pt").images
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
    assert reference.std() > 0.01


#: scheduler -> whether a solve split at a mid-path level must equal the whole solve.
RESTARTS = {
    "DDIMScheduler": True,
    "EulerDiscreteScheduler": True,
    "HeunDiscreteScheduler": True,
    "DPMSolverMultistepScheduler": False,  # 2M: the resumed part starts first order again
    "UniPCMultistepScheduler": False,  # and without UniPC's corrector on its first step
}


#: (family, scheduler) pairs of the restart test: every scheduler on SD, and those of CASES on SD-XL
#: and PixArt-Sigma (other conditioning, other networks: the same restart semantics).
RESTART_CASES = [("sd", scheduler) for scheduler in RESTARTS] + [
    (family, scheduler) for family in ("sdxl", "pixart-sigma") for scheduler in RESTARTS
    if any(case == (family, scheduler, {}) for case in CASES.values())
]


@pytest.mark.parametrize(("family", "scheduler"), RESTART_CASES)
def test_a_resumed_partial_solve_equals_the_whole_one_for_single_step_schedulers(
    family: str, scheduler: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    model, solver, levels, noise, denoise = _split_solve_setup(registries, tiny(family), scheduler=scheduler)

    with torch.inference_mode():
        whole = solver.solve(denoise, noise, levels)
        first = solver.solve(denoise, noise, levels[:3])
        rest = solver.solve(denoise, first.x, levels[2:])
    assert first.nfe + rest.nfe == whole.nfe
    difference = (rest.x - whole.x).abs().max().item()
    if RESTARTS[scheduler]:  # float32 rounding of latents up to ~70 (PixArt's): relative
        assert difference <= 1e-6 * whole.x.abs().max().item() + 1e-6
    else:
        assert difference > 1e-4  # the history matters: a resumed 2nd-order step is not the same


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_a_resumed_multistep_solve_equals_a_fresh_scheduler_begun_mid_path(
    scheduler: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    """What the math says a restart must be: the resumed part of a split solve equals diffusers'
    own scheduler, set up as for the whole run, begun (``set_begin_index``) at the split's step with
    an empty history, and driven by the pipeline's UNet with classifier-free guidance."""
    model, solver, levels, noise, denoise = _split_solve_setup(registries, tiny("sd"), scheduler=scheduler)

    pipe = _pipeline(tiny("sd"), scheduler, {})
    begin = 2
    with torch.inference_mode():
        first = solver.solve(denoise, noise, levels[:begin + 1])
        rest = solver.solve(denoise, first.x, levels[begin:])
        positive, negative = pipe.encode_prompt(PROMPT, "cpu", 1, True)
        fresh = pipe.scheduler
        fresh.set_timesteps(STEPS)
        fresh.set_begin_index(begin)
        assert fresh.init_noise_sigma == 1  # the core's state is the scheduler's sample
        x = first.x  # (1, 4, h, w)
        for t in fresh.timesteps[begin:]:
            pair = fresh.scale_model_input(torch.cat([x, x]), t)
            eps = pipe.unet(pair, t, encoder_hidden_states=torch.cat([negative, positive])).sample
            unguided, guided = eps.chunk(2)
            x = fresh.step(unguided + 3.0 * (guided - unguided), t, x).prev_sample
    assert rest.nfe == len(fresh.timesteps) - begin
    torch.testing.assert_close(rest.x, x, atol=ATOL, rtol=0)
    assert (rest.x - first.x).abs().max() > 1e-2  # the resumed part did move the state


def test_flux_resumed_flow_euler_equals_the_whole_solve(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    _, solver, levels, noise, denoise = _split_solve_setup(registries, tiny("flux"))
    with torch.inference_mode():
        whole = solver.solve(denoise, noise, levels)
        first = solver.solve(denoise, noise, levels[:2])
        rest = solver.solve(denoise, first.x, levels[1:])
    torch.testing.assert_close(rest.x, whole.x, atol=1e-6, rtol=0)


def test_native_solves_move_their_ends_onto_the_schedulers_grid(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    model = _model(registries, tiny("sd"), scheduler="Euler")  # the suffix may be left out
    solver = resolve_solver(model, "native", STEPS)
    assert solver.scheduler_name == "EulerDiscreteScheduler"
    grid = solver.levels(STEPS)
    assert grid == pytest.approx([0.752, 0.502, 0.252, 0.002, 0.0])  # leading spacing, then clean
    assert solver.nfe([0.9, 0.5, 0.0]) == 4  # from 0.752 (nearest) down to 0
    assert solver.nfe([0.51, 0.26]) == 1 and solver.nfe([0.51, 0.5]) == 0


def test_unknown_scheduler_lists_compatible_ones_before_loading(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    with pytest.raises(ConfigError, match="compatible: .*DPMSolverMultistepScheduler"):
        plan(RunConfig(model=f"hf:{tiny('sd')}", prompt=PROMPT, verifiers=["test-brightness"],
                       solver="native", model_options={"scheduler": "NoSuchScheduler"}), registries)
    with pytest.raises(ConfigError, match="use_karras_sigma"):
        plan(RunConfig(model=f"hf:{tiny('sd')}", prompt=PROMPT, solver="native",
                       model_options={"scheduler": "Euler", "scheduler_options": {"use_karras_sigma": 1}}),
             registries)
    with pytest.raises(ConfigError, match="compatible: FlowMatchEulerDiscreteScheduler"):
        plan(RunConfig(model=f"hf:{tiny('flux')}", prompt=PROMPT, solver="native",
                       model_options={"scheduler": "DDIMScheduler"}), registries)


@pytest.mark.parametrize(("scheduler", "strategy"), [
    ("EulerAncestralDiscreteScheduler", "random"),  # stochastic: step noise from recorded seeds
    ("EulerAncestralDiscreteScheduler", "paths"),  # and restarts from re-noised mid-path states
    ("DPMSolverMultistepScheduler", "paths"),  # a multistep history reset at each restart
    ("DPMSolverMultistepScheduler", "smc"),
    ("EulerAncestralDiscreteScheduler", "pruning"),
])
def test_a_native_search_replays_bit_for_bit(
    scheduler: str, strategy: str, tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    import json

    from noisesearch.api import replay_run

    out = tmp_path / "run"
    result = noisesearch.search(
        model="hf", model_options={"path": str(tiny("sd")), "scheduler": scheduler}, prompt=PROMPT,
        verifiers=["test-brightness"], evaluator="none", budget_nfe=40, steps=4, batch_size=3,
        strategy=strategy, solver="native", output=str(out), registries=registries,
    )
    assert result.usage.nfe <= 40
    run = json.loads((out / "run.json").read_text())
    solves = [op for op in run["best"]["recipe"]["ops"] if op["op"] == "solve"]
    stochastic = scheduler.startswith("EulerAncestral")
    assert all(isinstance(op.get("noise_seed"), int) == stochastic for op in solves)
    if strategy == "random":  # a whole sample's step noise comes from its seed: the first is the baseline
        assert run["baseline_origin"] == "candidate"
    outcome = replay_run(out, registries=registries)
    assert outcome.identical, outcome.max_abs_diff


def test_cli_unknown_scheduler_exits_2_listing_the_compatible_ones(tiny: Callable[[str], Path]) -> None:
    result = CliRunner().invoke(build_app(), [
        "run", "--model", f"hf:{tiny('sd')}", "--prompt", PROMPT, "--solver", "native",
        "--model-opt", "scheduler=Nope", "--candidates", "1", "--steps", "2",
    ])
    assert result.exit_code == 2, result.output
    assert "UniPCMultistepScheduler" in result.output and "Traceback" not in result.output


def test_a_scheduler_without_the_native_solver_is_refused_before_loading(
    tiny: Callable[[str], Path], tmp_path: Path
) -> None:
    """The core's ddim and heun never read ``scheduler``: refused (exit 2), not silently unused."""
    result = CliRunner().invoke(build_app(), [
        "run", "--model", f"hf:{tiny('sd')}", "--prompt", PROMPT, "--model-opt", "scheduler=Euler",
        "--candidates", "1", "--steps", "2", "--output", str(tmp_path / "run"),
    ])
    assert result.exit_code == 2, result.output
    assert "--solver native" in " ".join(result.output.split()) and not (tmp_path / "run").exists()


def test_a_native_heun_budget_below_one_candidate_is_refused_at_planning(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    """Native Heun costs 2 * steps - 1 NFEs per candidate (its last step is one call)."""
    def config(nfe: int) -> RunConfig:
        return RunConfig(model="hf", model_options={"path": str(tiny("sd")), "scheduler": "Heun"},
                         prompt=PROMPT, solver="native", steps=4, budget_nfe=nfe,
                         verifiers=["test-brightness"])

    with pytest.raises(ConfigError, match="at least 7"):
        plan(config(6), registries, check_output=False)
    assert plan(config(7), registries, check_output=False).budget.nfe == 7
