"""diffusers' noise on our terms: ``best_noise.safetensors`` holds the winner's noise as the
family's pipeline takes ``latents=`` (``result.best_latents``), and the pipeline called with it,
the recorded scheduler and arguments gives the search's image (within ``ATOL`` on [0, 1] pixels).

Tiny random-weight pipelines (``tests/diffusers_tiny.py``), loaded through the ``hf`` model from a
saved folder and, for the reference, with diffusers' own ``from_pretrained``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers_tiny import IMAGE_SIZE, registries_with_brightness

import noisesearch
from noisesearch.plugins import Registries

ATOL = 1e-4
PROMPT = "a photo of a red apple on a wooden table"
STEPS = 3


pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def registries() -> Registries:
    return registries_with_brightness()


def _search(folder: Path, registries: Registries, output: Path, **fields: Any) -> Any:
    options = {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "guidance_scale": 3.0,
               **fields.pop("model_options", {})}
    return noisesearch.search(model=f"hf:{folder}", prompt=PROMPT, verifiers=["test-brightness"],
                              candidates=fields.pop("candidates", 3), steps=STEPS, output=str(output),
                              model_options=options, registries=registries, **fields)


def _saved(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = run_dir / "best_noise.safetensors"
    with safe_open(str(path), "pt") as handle:
        info = json.loads(handle.metadata()["latents"])
    return load_file(str(path)), info


def _pipeline_image(folder: Path, latents: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """What a diffusers user runs: their pipeline, the recorded scheduler, ``latents=``."""
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, info["scheduler"]).from_config(pipe.scheduler.config,
                                                                      **info["scheduler_options"])
    generator = None
    if "generator_seed" in info:
        generator = torch.Generator("cpu").manual_seed(info["generator_seed"])
    with torch.inference_mode():
        return pipe(PROMPT, latents=latents, generator=generator, output_type="pt",
                    **info["kwargs"]).images  # (1, 3, H, W)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "solver", "scheduler", "more"), [
    ("sd", "ddim", None, {}),
    ("sd", "native", "EulerAncestralDiscreteScheduler", {}),  # stochastic: the step noise's seed too
    ("flux", "ddim", None, {}),  # packed latents
    # T5 prompt lengths other than the pipelines' defaults: the recorded call must carry them
    ("sd3", "ddim", None, {"max_sequence_length": 12}),
    ("pixart-sigma", "ddim", None, {"max_sequence_length": 12, "clean_caption": False}),
])
def test_the_saved_latents_give_the_searchs_image_from_the_users_pipeline(
    family: str, solver: str, scheduler: str | None, more: dict[str, Any], tiny: Callable[[str], Path],
    registries: Registries, tmp_path: Path,
) -> None:
    options = {"scheduler": scheduler} if scheduler else {}
    result = _search(tiny(family), registries, tmp_path / "run", solver=solver,
                     model_options={**options, **more})
    tensors, info = _saved(result.run_dir)
    assert info["regenerates"] is True
    torch.testing.assert_close(tensors["latents"], result.best_latents, atol=0, rtol=0)
    assert list(tensors["latents"].shape) == info["shape"]
    if family == "flux":
        channels, h, w = 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2
        assert info["shape"] == [1, (h // 2) * (w // 2), 4 * channels]  # the pipeline's packed tokens
    else:
        assert info["shape"] == [1, *tensors["noise"].shape]
        assert torch.equal(tensors["latents"][0], tensors["noise"])  # unscaled: the pipeline scales
    if scheduler:
        assert info["scheduler"] == scheduler and "generator_seed" in info
    for option, value in more.items():
        assert info["kwargs"][option] == value

    image = _pipeline_image(tiny(family), tensors["latents"], info)
    torch.testing.assert_close(image, result.best.image[None].float(), atol=ATOL, rtol=0)
    assert image.std() > 0.01


def test_an_smc_winner_says_its_noise_alone_does_not_regenerate_it(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    result = _search(tiny("sd"), registries, tmp_path / "run", strategy="smc", candidates=None,
                     budget_nfe=12)
    assert "renoise" in [op["op"] for op in result.best.recipe["ops"]]  # SMC's resampling steps
    _, info = _saved(result.run_dir)
    assert info["regenerates"] is False and "replay" in info["why"]


@pytest.mark.slow
def test_the_core_heun_solver_has_no_pipeline_scheduler(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    result = _search(tiny("sd"), registries, tmp_path / "run", solver="heun", candidates=1)
    assert result.best_latents is not None
    assert result.latents_info["regenerates"] is False and result.latents_info["scheduler"] is None


def test_the_saved_call_carries_the_negative_prompt(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    result = _search(tiny("sd"), registries, tmp_path / "run", candidates=2, negative_prompt="blurry, dark")
    tensors, info = _saved(result.run_dir)
    assert info["regenerates"] is True and info["kwargs"]["negative_prompt"] == "blurry, dark"
    image = _pipeline_image(tiny("sd"), tensors["latents"], info)
    torch.testing.assert_close(image, result.best.image[None].float(), atol=ATOL, rtol=0)


def test_a_stochastic_flow_run_says_its_pipeline_cannot_regenerate_it(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    """The FLUX.1 and SD3 pipelines call ``scheduler.step`` without their generator: the recorded
    step-noise seed cannot reach a stochastic scheduler there, so only replay regenerates the run."""
    result = _search(tiny("flux"), registries, tmp_path / "run", candidates=2, solver="native",
                     model_options={"scheduler_options": {"stochastic_sampling": True}})
    assert "noise_seed" in result.best.recipe["ops"][0]  # the run did draw step noise
    _, info = _saved(result.run_dir)
    assert info["regenerates"] is False
    assert "generator" in info["why"] and "noisesearch replay" in info["why"]
