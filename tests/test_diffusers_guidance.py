"""Guidance options ``guidance_rescale`` and ``clip_skip`` (SD 1.x/2.x, SD-XL) on the tiny pipelines.

Our sampler with the options must equal the diffusers pipeline called with the same options from
the same latents (within 1e-4), and the options must change the image (else the equivalence says
nothing). Other families refuse them while planning, before any weights load. SD3's skip-layer
guidance likewise, against ``StableDiffusion3Pipeline``'s ``skip_guidance_layers``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers_tiny import IMAGE_SIZE

from noisesearch import Condition, ConfigError
from noisesearch.api import plan
from noisesearch.config import RunConfig
from noisesearch.plugins import Registries, build_registries, get_plugin_manager
from noisesearch.sampling import draw_noise, solve
from noisesearch_builtin.models.diffusers import guidance

ATOL = 1e-4
PROMPT = "a photo of a red apple on a wooden table"
STEPS, SEEDS = 3, [11, 12]


pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def registries() -> Registries:
    return build_registries(get_plugin_manager(load_entrypoints=False))


def _ours(registries: Registries, folder: Path, **options: Any) -> torch.Tensor:
    model = registries.models.create("hf", path=str(folder), height=IMAGE_SIZE, width=IMAGE_SIZE,
                                     guidance_scale=3.0, **options)
    noise = draw_noise(SEEDS, model.latent_shape)  # (2, C, h, w)
    prepared = model.prepare(Condition(prompt=PROMPT))
    with torch.inference_mode():
        solved = solve(lambda x, s: model.denoise(x, s, prepared), noise, model.schedule, model.levels(STEPS))
        return model.decode(solved.x)  # (2, 3, H, W) in [0, 1]


def _pipeline(folder: Path, **call: Any) -> torch.Tensor:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    # diffusers' SD encode_prompt(clip_skip=) needs CLIPTextModel.text_model, gone in transformers 5.
    alias = guidance.text_model_alias(pipe.text_encoder) if "clip_skip" in call else contextlib.nullcontext()
    side = IMAGE_SIZE // pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, side, side)
    with alias:
        return pipe(prompt=[PROMPT] * len(SEEDS), latents=draw_noise(SEEDS, shape), num_inference_steps=STEPS,
                    height=IMAGE_SIZE, width=IMAGE_SIZE, guidance_scale=3.0, output_type="pt", **call).images


@pytest.mark.parametrize("family", ["sd", pytest.param("sdxl", marks=pytest.mark.slow)])
def test_guidance_rescale_and_clip_skip_reproduce_the_pipeline(
    family: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    options = {"guidance_rescale": 0.7, "clip_skip": 1}
    ours = _ours(registries, tiny(family), **options)
    reference = _pipeline(tiny(family), **options)
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
    plain = _ours(registries, tiny(family))
    assert (ours - plain).abs().max() > 10 * ATOL  # the options did change the image


def test_the_deepest_clip_skip_reproduces_the_pipeline(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    """The largest clip_skip planning lets through (the 2-layer encoder's embeddings) is one the
    pipeline itself runs: the bound refuses only what would fail."""
    ours = _ours(registries, tiny("sd"), clip_skip=2)
    torch.testing.assert_close(ours, _pipeline(tiny("sd"), clip_skip=2), atol=ATOL, rtol=0)


def test_rescale_is_diffusers_rescale_noise_cfg() -> None:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    guided, cond = torch.randn(3, 4, 5, 5) * 3, torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(guidance.rescale(guided, cond, 0.3), rescale_noise_cfg(guided, cond, 0.3))


@pytest.mark.parametrize(
    ("family", "options", "message"),
    [
        ("flux", {"guidance_rescale": 0.5}, "only the SD 1.x/2.x and SD-XL pipelines have guidance_rescale"),
        ("sd3", {"clip_skip": 2}, "only the SD 1.x/2.x and SD-XL pipelines have clip_skip"),
        ("pixart-sigma", {"clip_skip": 1}, "PixArtSigmaModel.s does not"),
        ("sd", {"guidance_rescale": 1.5}, "must be a number from 0 to 1"),
        ("sd", {"clip_skip": 0}, "must be a positive number of CLIP layers"),
        # encode_prompt indexes hidden_states[-(clip_skip + 1)] (SD-XL: + 2) of 2-layer encoders
        ("sd", {"clip_skip": 3}, "has 2 layers, so clip_skip can skip at most 2; got 3"),
        ("sdxl", {"clip_skip": 2}, "has 2 layers, so clip_skip can skip at most 1; got 2"),
    ],
)
def test_guidance_options_are_refused_at_planning_where_they_do_not_apply(
    family: str, options: dict[str, Any], message: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    config = RunConfig(model=f"hf:{tiny(family)}", prompt="x", verifiers=["clip"], model_options=options)
    with pytest.raises(ConfigError, match=message):
        plan(config, registries)


#: SD3 skip-layer guidance: block 1 of the tiny transformer's two, on steps 1 and 2 of 4
#: (4 * 0.01 < i < 4 * 0.6), so the window's edges are exercised too.
SLG = {"skip_guidance_layers": [1], "skip_layer_guidance_scale": 2.0,
       "skip_layer_guidance_start": 0.01, "skip_layer_guidance_stop": 0.6}


@pytest.mark.parametrize("solver", ["ddim", "native"])
def test_sd3_skip_layer_guidance_reproduces_the_pipeline(
    solver: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    from diffusers import DiffusionPipeline

    from noisesearch.sampling import resolve_solver

    steps = 4

    def ours(**options: Any) -> torch.Tensor:
        model = registries.models.create("hf", path=str(tiny("sd3")), height=IMAGE_SIZE, width=IMAGE_SIZE,
                                         guidance_scale=3.0, **options)
        chosen = resolve_solver(model, solver, steps)
        levels = chosen.levels(steps) if solver == "native" else model.levels(steps)
        prepared = model.prepare(Condition(prompt=PROMPT))
        with torch.inference_mode():
            solved = solve(lambda x, s: model.denoise(x, s, prepared), draw_noise(SEEDS, model.latent_shape),
                           model.schedule, levels, chosen)
            assert model.pipeline_call(solver, steps)["kwargs"].get("skip_guidance_layers") == \
                options.get("skip_guidance_layers")
            return model.decode(solved.x)  # (2, 3, H, W)

    with_slg, plain = ours(**SLG), ours()
    pipe = DiffusionPipeline.from_pretrained(tiny("sd3"))
    pipe.set_progress_bar_config(disable=True)
    side = IMAGE_SIZE // pipe.vae_scale_factor
    latents = draw_noise(SEEDS, (pipe.transformer.config.in_channels, side, side))
    reference = pipe(prompt=[PROMPT] * len(SEEDS), latents=latents, num_inference_steps=steps,
                     height=IMAGE_SIZE, width=IMAGE_SIZE, guidance_scale=3.0, output_type="pt", **SLG).images
    torch.testing.assert_close(with_slg, reference, atol=ATOL, rtol=0)
    assert (with_slg - plain).abs().max() > 10 * ATOL  # skip-layer guidance did change the image
    narrow = pipe(prompt=[PROMPT] * len(SEEDS), latents=latents, num_inference_steps=steps, height=IMAGE_SIZE,
                  width=IMAGE_SIZE, guidance_scale=3.0, output_type="pt",
                  **{**SLG, "skip_layer_guidance_stop": 0.3}).images  # step 1 only
    assert (narrow - reference).abs().max() > 10 * ATOL  # the window matters, so it was checked


@pytest.mark.parametrize(("options", "message"), [
    ({"skip_guidance_layers": "7,8"}, "list of transformer block indices"),
    ({"skip_guidance_layers": [1], "skip_layer_guidance_start": 0.5, "skip_layer_guidance_stop": 0.2},
     "start < stop"),
])
def test_bad_skip_layer_guidance_is_refused_at_planning(
    options: dict[str, Any], message: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    config = RunConfig(model=f"hf:{tiny('sd3')}", prompt="x", verifiers=["clip"], model_options=options)
    with pytest.raises(ConfigError, match=message):
        plan(config, registries)


def test_skip_layer_guidance_is_an_sd3_option_only(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    config = RunConfig(model=f"hf:{tiny('sd')}", prompt="x", verifiers=["clip"],
                       model_options={"skip_guidance_layers": [1]})
    with pytest.raises(ConfigError, match="skip_guidance_layers"):
        plan(config, registries)
