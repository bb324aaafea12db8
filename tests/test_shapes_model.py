"""The embedded ``shapes`` model, the default of ``noisesearch run``: a preset over the shipped
``StableDiffusionPipeline`` folder, run by the same adapter as any SD 1.x pipeline, searched on
``shapes-clip`` and judged by ``shapes-judge``; prompts outside its world are refused before
anything loads.

These tests hold for any weights in the shipped folders (they check plumbing and exactness
against diffusers, not image quality: docs/shapes.md measures that).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from noisesearch import Condition, ConfigError, IncompatibleError
from noisesearch.cli import build_app
from noisesearch.config import RunConfig
from noisesearch.planning import plan
from noisesearch.sampling import draw_noise, solve
from noisesearch_builtin.models.diffusers.presets import SHAPES_DEFAULT_PROMPT, Shapes
from noisesearch_builtin.models.diffusers.stable_diffusion import StableDiffusionModel
from noisesearch_builtin.shapes import PIPELINE_DIR, PROMPTS_FILE
from noisesearch_builtin.shapes.grammar import load_suite, parse_prompt
from noisesearch_builtin.shapes.world import IMAGE_SIZE, MAX_COUNT


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


@pytest.fixture(scope="module", autouse=True)
def _plain_cpu_kernels() -> Iterator[None]:
    """Without oneDNN, as tests/test_diffusers_models.py: on these CPUs it re-creates its
    convolution primitives for tiny inputs on every call (seconds instead of milliseconds)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = enabled


# -- planning: nothing loads ---------------------------------------------------------------------


def test_a_run_with_no_options_plans_shapes_with_its_prompt_verifier_and_judge() -> None:
    checked = plan(RunConfig())
    assert checked.model.name == "shapes" and checked.model.factory is Shapes
    assert issubclass(Shapes, StableDiffusionModel)  # the SD 1.x adapter, not a copy
    assert checked.condition == Condition(prompt=SHAPES_DEFAULT_PROMPT)
    assert checked.config.prompt == SHAPES_DEFAULT_PROMPT  # run.json says what ran
    assert checked.config.verifiers == ["shapes-clip"] and checked.evaluator.name == "shapes-judge"
    assert checked.strategy.name == "random" and checked.budget.candidates == 16
    assert checked.steps == Shapes.default_steps
    # Compositional: two phrases, a count and colours bound to shapes.
    assert parse_prompt(SHAPES_DEFAULT_PROMPT).category == "color_attr"


def test_a_prompt_runs_in_the_grammars_canonical_form() -> None:
    checked = plan(RunConfig(prompt="  Two RED circles and a blue Square. "))
    assert checked.condition.prompt == "two red circles and a blue square"


def test_every_prompt_of_the_held_out_suite_passes_the_models_check() -> None:
    assert Path(Shapes.prompt_suite) == PROMPTS_FILE  # the bench's --suite model
    for prompt in load_suite():
        assert Shapes.check_condition(Condition(prompt=prompt.text)).prompt == prompt.text


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (["--prompt", "two red circels and a blue sqare"],
         ["prompt:", "'circels'", "'circles'", "'square'", "vocabulary", "triangle"]),
        (["--prompt", ""], ["prompt:", "empty"]),
        (["--prompt", "   "], ["prompt:", "empty"]),
        (["--prompt", f"{MAX_COUNT + 1} red circles"], ["prompt:", str(MAX_COUNT)]),
        (["--label", "3"], ["text-conditioned: give it --prompt, not --label"]),
        (["--negative-prompt", "blurry"], ["negative_prompt:", "'blurry'", "vocabulary"]),
    ],
)
def test_bad_input_exits_2_before_anything_loads(
    tmp_path: Path, args: list[str], messages: list[str]
) -> None:
    out = tmp_path / "never"
    result = invoke("run", "-o", str(out), *args)
    assert result.exit_code == 2, result.output
    for message in messages:
        assert message in result.output, (message, result.output)
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_bad_prompt_is_refused_without_importing_torch() -> None:
    """Planning checks the prompt with the numpy grammar alone: nothing heavy is imported."""
    code = (
        "import sys\n"
        "from noisesearch import ConfigError, search\n"
        "try:\n"
        "    search(prompt='a purple elephant', write=False)\n"
        "except ConfigError as error:\n"
        "    print('refused:', error)\n"
        "print('torch imported:', 'torch' in sys.modules,\n"
        "      'diffusers imported:', 'diffusers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: prompt:" in done.stdout and "'elephant'" in done.stdout
    assert "torch imported: False diffusers imported: False" in done.stdout


def test_the_api_raises_the_same_typed_errors() -> None:
    with pytest.raises(ConfigError, match="vocabulary"):
        plan(RunConfig(prompt="a cat"))
    with pytest.raises(IncompatibleError, match="text-conditioned"):
        plan(RunConfig(label=3))


# -- the shipped pipeline ------------------------------------------------------------------------


@pytest.mark.slow
def test_plain_diffusers_loads_and_samples_the_shipped_pipeline() -> None:
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(PIPELINE_DIR)
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.safety_checker is None
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        SHAPES_DEFAULT_PROMPT, num_inference_steps=3, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert images.min() >= 0 and images.max() <= 1


@pytest.mark.slow
def test_the_shapes_model_reproduces_the_shipped_pipeline_from_the_same_latents() -> None:
    from diffusers import StableDiffusionPipeline

    model = Shapes(device="cpu")
    assert (model.height, model.width) == (IMAGE_SIZE, IMAGE_SIZE)
    condition = Shapes.check_condition(Condition(prompt=SHAPES_DEFAULT_PROMPT))
    noise = draw_noise([3, 4], model.latent_shape)  # (2, C, h, w)
    levels = model.levels(4)
    prepared = model.prepare(condition)
    with torch.inference_mode():
        solved = solve(lambda x, s: model.denoise(x, s, prepared), noise, model.schedule, levels)
        ours = model.decode(solved.x)  # (2, 3, H, W) in [0, 1]

    pipe = StableDiffusionPipeline.from_pretrained(PIPELINE_DIR)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt=[condition.prompt] * 2, latents=noise, num_inference_steps=4,
        guidance_scale=Shapes.default_guidance_scale, output_type="pt",
    ).images  # (2, 3, H, W) in [0, 1]
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


# -- the default run, end to end -----------------------------------------------------------------


@pytest.mark.slow
def test_the_default_run_writes_legible_images_and_the_judges_clauses(tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "run"
    result = invoke("run", "-o", str(out), "--candidates", "2", "--steps", "2")  # else the defaults
    assert result.exit_code == 0, result.output
    for text in ("shapes", "shapes-clip", "shapes-judge", "two red circles", "a blue square", "exact:"):
        assert text in result.output, (text, result.output)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["model"] == "shapes" and run["condition"]["prompt"] == SHAPES_DEFAULT_PROMPT
    verdicts = run["verdicts"]
    assert verdicts["evaluator"] == "shapes-judge"
    for key in ("baseline", "best"):
        clauses = verdicts[f"{key}_clauses"]
        assert [text for text, _ in clauses][:2] == ["two red circles", "a blue square"]
        assert verdicts[f"{key}_agrees"] == all(ok for _, ok in clauses)
        fraction = sum(ok for _, ok in clauses) / len(clauses)
        assert run[key]["scores"]["shapes-judge"] == pytest.approx(fraction)
    # Enlarged nearest-neighbour: every 4x4 block of the 128 px PNG is one pixel of the 32 px image.
    picture = np.asarray(Image.open(out / "best.png").convert("RGB"))  # (128, 128, 3)
    blocks = picture.reshape(IMAGE_SIZE, 4, IMAGE_SIZE, 4, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    page = (out / "report.html").read_text()
    assert 'class="clauses"' in page and 'class="pixelated"' in page
