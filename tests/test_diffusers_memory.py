"""Memory options (``vae_slicing``, ``vae_tiling``, ``attention_slicing``, ``cpu_offload``) on the
tiny pipelines: each switches diffusers' own option, results stay the pipeline's, and options that
cannot apply are refused while planning. CPU offload needs an accelerator: on the CPU only its
refusal is tested here.
"""

from __future__ import annotations

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

ATOL = 1e-4
PROMPT = "a photo of a red apple on a wooden table"


pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def registries() -> Registries:
    return build_registries(get_plugin_manager(load_entrypoints=False))


def _images(registries: Registries, folder: Path, **options: Any) -> tuple[Any, torch.Tensor]:
    model = registries.models.create("hf", path=str(folder), height=IMAGE_SIZE, width=IMAGE_SIZE,
                                     guidance_scale=3.0, **options)
    noise = draw_noise([1, 2, 3], model.latent_shape)
    prepared = model.prepare(Condition(prompt=PROMPT))
    with torch.inference_mode():
        x = solve(lambda x, s: model.denoise(x, s, prepared), noise, model.schedule, model.levels(2)).x
        return model, model.decode(x)


def test_memory_switches_are_diffusers_own_and_keep_the_result(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    _, plain = _images(registries, tiny("sd"))
    model, switched = _images(registries, tiny("sd"), vae_slicing=True, vae_tiling=True,
                              attention_slicing="max")
    vae = model.pipe.vae
    assert vae.use_slicing and vae.use_tiling
    processors = {type(p).__name__ for p in model.pipe.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}  # what enable_attention_slicing installs
    torch.testing.assert_close(switched, plain, atol=ATOL, rtol=0)  # 16 px: below the tile size


def test_attention_slicing_equals_the_pipeline_with_it(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    from diffusers import DiffusionPipeline

    model, ours = _images(registries, tiny("sd"), attention_slicing=True)
    pipe = DiffusionPipeline.from_pretrained(tiny("sd"))
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_attention_slicing()
    reference = pipe(prompt=[PROMPT] * 3, latents=draw_noise([1, 2, 3], model.latent_shape),
                     num_inference_steps=2, height=IMAGE_SIZE, width=IMAGE_SIZE, guidance_scale=3.0,
                     output_type="pt").images
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("family", "options", "message"), [
    ("flux", {"attention_slicing": True}, "no attention slicing"),
    ("sd", {"attention_slicing": "sometimes"}, "attention_slicing"),
    ("sd", {"cpu_offload": "sequential", "device": "cpu"}, "needs an accelerator"),
    ("sd", {"cpu_offload": "model", "device": "cpu"}, "needs an accelerator"),
    ("sd", {"cpu_offload": "everything"}, "model, sequential or false"),
])
def test_memory_options_that_cannot_apply_are_refused_while_planning(
    family: str, options: dict[str, Any], message: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(RunConfig(model=f"hf:{tiny(family)}", prompt=PROMPT, model_options=options), registries)
