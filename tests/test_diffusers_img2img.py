"""img2img (``--init-image``, ``--strength``) on the tiny pipelines: the search's candidates equal
diffusers' img2img pipeline of the family (SD, SD-XL, SD3, FLUX) at the same seed, strength and
steps (within ``ATOL``), a winner replays bit for bit and refuses another image, and bad input
exits 2 before anything loads.

The pipeline samples the VAE posterior with its generator; noisesearch encodes with the posterior
mean (the same start for every candidate). So the reference pipeline is given the image's latents,
encoded by diffusers' own ``image_processor`` and VAE (``latent_dist.mode()``), as its ``image=``
(a 4-channel tensor, which the img2img pipelines take as latents); its noise then comes from the
generator of the candidate's seed, as noisesearch's does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers_tiny import IMAGE_SIZE, TinyFolders, registries_with_brightness
from typer.testing import CliRunner

import noisesearch
from noisesearch import ConfigError
from noisesearch.cli import build_app
from noisesearch.plugins import Registries
from noisesearch.sampling import draw_noise

ATOL = 1e-4
PROMPT = "a photo of a red apple on a wooden table"
STEPS = 4
STRENGTH = 0.6  # int(4 * 0.6) = 2 of the 4 steps run


pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return TinyFolders(tmp_path_factory.mktemp("img2img"))


@pytest.fixture(scope="module")
def registries() -> Registries:
    return registries_with_brightness()


def _image(path: Path, size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """A random-colour RGB PNG of ``size`` x ``size`` pixels."""
    from PIL import Image

    pixels = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed))
    Image.fromarray(pixels.to(torch.uint8).numpy(), mode="RGB").save(path)
    return path


def _search(folder: Path, image: Path, registries: Registries, **fields: Any) -> Any:
    options = {"init_image": str(image), "strength": STRENGTH, "guidance_scale": 3.0,
               **fields.pop("model_options", {})}
    return noisesearch.search(model=f"hf:{folder}", prompt=PROMPT, verifiers=["test-brightness"],
                              evaluator="none", steps=STEPS, model_options=options, registries=registries,
                              **{"candidates": 2, "write": False, **fields})


def _img2img_pipeline(folder: Path, scheduler: str | None = None) -> Any:
    import diffusers

    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return pipe


def _reference(pipe: Any, image: Path, seed: int) -> torch.Tensor:
    """diffusers' img2img pipeline from the image's latents (posterior mean) and the seed's noise."""
    from PIL import Image

    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(Image.open(image).convert("RGB"))  # (1, 3, H, W)
        latents = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
        return pipe(PROMPT, image=latents, strength=STRENGTH, num_inference_steps=STEPS,
                    guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="pt").images  # (1, 3, H, W)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["ddim", "native-euler"])
def test_img2img_candidates_equal_the_img2img_pipeline_at_the_same_seed(
    solver: str, tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    image = _image(tmp_path / "init.png")
    scheduler = "EulerDiscreteScheduler" if solver == "native-euler" else None
    fields: dict[str, Any] = {}
    if scheduler:
        fields = {"solver": "native", "model_options": {"scheduler": scheduler}}
    result = _search(tiny("sd"), image, registries, **fields)
    assert result.nfe_per_candidate == int(STEPS * STRENGTH)  # the pipeline's get_timesteps
    pipe = _img2img_pipeline(tiny("sd"), scheduler)
    for candidate in result.top:
        reference = _reference(pipe, image, candidate.recipe["start"]["seed"])
        torch.testing.assert_close(candidate.image[None].float(), reference, atol=ATOL, rtol=0)
        assert torch.equal(candidate.noise, draw_noise([candidate.recipe["start"]["seed"]],
                                                       candidate.noise.shape)[0])  # the noise, not the start
    assert reference.std() > 0.01
    # The image matters: another init image gives another result from the same seeds.
    other = _search(tiny("sd"), _image(tmp_path / "other.png", seed=1), registries, **fields)
    by_seed = {c.recipe["start"]["seed"]: c.image for c in other.top}
    for candidate in result.top:
        assert (by_seed[candidate.recipe["start"]["seed"]] - candidate.image).abs().max() > 1e-3


#: family -> (its img2img pipeline class, the image latents from the VAE's posterior mean z)
FAMILIES: dict[str, tuple[str, Callable[[Any, torch.Tensor], torch.Tensor]]] = {
    "sdxl": ("StableDiffusionXLImg2ImgPipeline", lambda vae, z: z * vae.config.scaling_factor),
    "sd3": ("StableDiffusion3Img2ImgPipeline",
            lambda vae, z: (z - vae.config.shift_factor) * vae.config.scaling_factor),
    "flux": ("FluxImg2ImgPipeline", lambda vae, z: (z - vae.config.shift_factor) * vae.config.scaling_factor),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_img2img_equals_the_familys_img2img_pipeline(
    family: str, tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    import diffusers
    from PIL import Image

    image = _image(tmp_path / "init.png")
    result = _search(tiny(family), image, registries, candidates=1)
    flow = family in ("sd3", "flux")  # their get_timesteps round t_start down, SD's the kept steps
    kept = STEPS - int(STEPS - STEPS * STRENGTH) if flow else int(STEPS * STRENGTH)  # 3 or 2 of 4
    assert result.nfe_per_candidate == kept
    name, scale = FAMILIES[family]
    pipe = getattr(diffusers, name).from_pretrained(tiny(family))
    pipe.set_progress_bar_config(disable=True)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE} if family == "flux" else {}
    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(Image.open(image).convert("RGB"))  # (1, 3, H, W)
        latents = scale(pipe.vae, pipe.vae.encode(pixels).latent_dist.mode())
        reference = pipe(PROMPT, image=latents, strength=STRENGTH, num_inference_steps=STEPS,
                         guidance_scale=3.0, output_type="pt", **size,
                         generator=torch.Generator("cpu").manual_seed(result.best.recipe["start"]["seed"])).images
    torch.testing.assert_close(result.best.image[None].float(), reference, atol=ATOL, rtol=0)
    assert reference.std() > 0.01


@pytest.mark.slow
def test_an_img2img_winner_replays_and_refuses_another_image(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    from noisesearch.api import replay_run

    image = _image(tmp_path / "init.png")
    out = tmp_path / "run"
    result = _search(tiny("sd"), image, registries, write=True, output=str(out), candidates=3)
    assert set(result.best.recipe["inputs"]) == {"init_image"}
    assert result.latents_info["regenerates"] is False and "img2img" in result.latents_info["why"]
    assert replay_run(out, registries=registries).identical
    _image(image, seed=2)  # the same file name, another image
    with pytest.raises(ConfigError, match="init_image.*not the file the run used"):
        replay_run(out, registries=registries)


def _cli(tiny: Callable[[str], Path], tmp_path: Path, *args: str) -> Any:
    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), [
        "run", "--model", f"hf:{tiny('sd')}", "--prompt", PROMPT, "--candidates", "1", "--steps", "2",
        "--output", str(out), *args,
    ])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # refused before anything was made
    return " ".join(result.output.split())


def test_cli_bad_img2img_input_exits_2_naming_the_option(
    tiny: Callable[[str], Path], tmp_path: Path
) -> None:
    image = _image(tmp_path / "init.png")
    assert "--init-image" in _cli(tiny, tmp_path, "--init-image", str(tmp_path / "missing.png"))
    assert "no such file" in _cli(tiny, tmp_path, "--init-image", str(tmp_path / "missing.png"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert "not an image" in _cli(tiny, tmp_path, "--init-image", str(text))
    assert "--strength" in _cli(tiny, tmp_path, "--init-image", str(image), "--strength", "1.5")
    assert "--strength" in _cli(tiny, tmp_path, "--init-image", str(image), "--strength", "0")
    assert "--init-image too" in _cli(tiny, tmp_path, "--strength", "0.5")
    said = _cli(tiny, tmp_path, "--init-image", str(_image(tmp_path / "odd.png", size=15)))
    assert "multiple of 2" in said
    said = _cli(tiny, tmp_path, "--init-image", str(image), "--model-opt", "height=32")
    assert "the run's height is 32" in said


def test_a_strength_that_runs_no_step_is_refused_before_loading(
    tiny: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 steps x strength 0.3 keeps int(0.6) = 0 steps (the SD pipelines' rounding): refused
    while planning, naming --strength and --steps, before the pipeline loads."""
    from noisesearch_builtin.models.diffusers.base import DiffusersModel

    def loaded(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("the pipeline was loaded before the strength was refused")

    monkeypatch.setattr(DiffusersModel, "_load", loaded)
    said = _cli(tiny, tmp_path, "--init-image", str(_image(tmp_path / "init.png")), "--strength", "0.3")
    assert "--strength" in said and "runs no step" in said and "--steps" in said


def test_img2img_is_refused_before_loading_where_the_family_has_none(
    tiny: Callable[[str], Path], tmp_path: Path
) -> None:
    result = CliRunner().invoke(build_app(), [
        "run", "--model", f"hf:{tiny('pixart-sigma')}", "--prompt", PROMPT, "--candidates", "1",
        "--init-image", str(_image(tmp_path / "init.png")), "--dry-run",
    ])
    assert result.exit_code == 2, result.output
    assert "SD 1.x/2.x" in result.output and "Traceback" not in result.output


def test_img2img_on_dit_gets_the_img2img_refusal_not_an_unknown_option(
    tiny: Callable[[str], Path], tmp_path: Path
) -> None:
    result = CliRunner().invoke(build_app(), [
        "run", "--model", f"hf:{tiny('dit')}", "--label", "3", "--candidates", "1",
        "--init-image", str(_image(tmp_path / "init.png")), "--dry-run",
    ])
    assert result.exit_code == 2, result.output
    assert "init_image (--init-image)" in result.output and "SD 1.x/2.x" in result.output
    assert "not an option" not in result.output and "Traceback" not in result.output


def test_a_relative_init_image_is_recorded_absolute(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.json names the files a run read so that they mean the same from any directory."""
    _image(tmp_path / "init.png")
    monkeypatch.chdir(tmp_path)
    result = _search(tiny("sd"), Path("init.png"), registries, candidates=1)
    assert result.config.model_options["init_image"] == str((tmp_path / "init.png").resolve())
    assert result.config.model_options["path"] == str(tiny("sd").resolve())
