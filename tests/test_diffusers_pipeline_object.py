"""``noisesearch.search(model=pipe, ...)``: a diffusers pipeline already in memory, on the tiny SD
pipeline. It writes nothing unless asked, returns the best image as PIL (``result.image``), and
that image is the pipeline's own output from the winner's noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers_tiny import IMAGE_SIZE, build, registries_with_brightness

import noisesearch
from noisesearch import ConfigError, IncompatibleError
from noisesearch.plugins import Registries

PROMPT = "a photo of a red apple on a wooden table"
STEPS = 2


pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def registries() -> Registries:
    return registries_with_brightness()


def _search(pipe: Any, registries: Registries, **fields: Any) -> Any:
    return noisesearch.search(model=pipe, prompt=PROMPT, verifiers=["test-brightness"], candidates=3,
                              strategy="random",
                              steps=STEPS, registries=registries, **fields)


def test_a_pipeline_in_memory_is_searched_without_writing_and_gives_its_own_image(
    registries: Registries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pipe = build("sd")
    pipe.set_progress_bar_config(disable=True)
    result = _search(pipe, registries, model_options={"guidance_scale": 3.0, "height": IMAGE_SIZE,
                                                       "width": IMAGE_SIZE})
    assert result.run_dir is None and list(tmp_path.iterdir()) == []  # nothing written
    assert result.config.model == "hf"
    image = result.image
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"

    noise = result.best.noise[None].float()  # (1, C, h, w): the winner's initial noise
    with torch.inference_mode():
        reference = pipe(prompt=PROMPT, latents=noise, num_inference_steps=STEPS,
                         guidance_scale=3.0, height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="pt").images
    torch.testing.assert_close(result.best.image[None].float(), reference, atol=1e-4, rtol=0)
    assert reference.std() > 0.01


def test_the_users_scheduler_samples_with_the_native_solver(registries: Registries) -> None:
    """A scheduler the user set on the pipeline is the one ``solver="native"`` runs."""
    from diffusers import EulerDiscreteScheduler

    pipe = build("sd")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    result = _search(pipe, registries, solver="native", model_options={"guidance_scale": 3.0,
                     "height": IMAGE_SIZE, "width": IMAGE_SIZE})
    with torch.inference_mode():
        reference = pipe(prompt=PROMPT, latents=result.best.noise[None].float(), num_inference_steps=STEPS,
                         guidance_scale=3.0, height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="pt").images
    torch.testing.assert_close(result.best.image[None].float(), reference, atol=1e-4, rtol=0)


def test_a_pipeline_in_memory_writes_its_run_folder_when_asked(
    registries: Registries, tmp_path: Path
) -> None:
    pipe = build("sd")
    result = _search(pipe, registries, write=True, output=str(tmp_path / "run"),
                     model_options={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    assert result.run_dir is not None and (result.run_dir / "run.json").is_file()


def test_bad_pipeline_objects_and_options_are_refused(registries: Registries) -> None:
    from diffusers import DDPMPipeline

    with pytest.raises(IncompatibleError, match="DDPMPipeline cannot be searched"):
        _search(DDPMPipeline.__new__(DDPMPipeline), registries)
    with pytest.raises(ConfigError, match="not for a pipeline already in memory"):
        _search(build("sd"), registries, model_options={"path": "x"})


def test_an_img2img_or_subclassed_pipeline_is_refused_with_the_way_to_search_it(
    registries: Registries,
) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    img2img = StableDiffusionImg2ImgPipeline.__new__(StableDiffusionImg2ImgPipeline)
    with pytest.raises(IncompatibleError, match=r"StableDiffusionPipeline\(\*\*pipe.components\) and "
                                                r"model_options=\{'init_image'"):
        _search(img2img, registries)

    class MyPipeline(StableDiffusionPipeline):  # a user's subclass: its own sampling would be ignored
        pass

    with pytest.raises(IncompatibleError, match=r"subclass of diffusers' StableDiffusionPipeline.*"
                                                r"StableDiffusionPipeline\(\*\*pipe.components\)"):
        _search(MyPipeline.__new__(MyPipeline), registries)
