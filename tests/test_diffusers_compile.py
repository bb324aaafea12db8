"""``--model-opt compile=MODE`` on the tiny SD pipeline: the denoiser runs through torch.compile
with static batch shapes (the last, smaller batch padded to the run's batch size), gives the
eager images, and a candidate of a padded batch replays exactly. The backend is ``eager``
(dynamo traces the network, no code generation): no C++ compiler, and fast; inductor and CUDA
graphs (``reduce-overhead``) need a GPU to pay off and are not run here."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers_tiny import IMAGE_SIZE, registries_with_brightness

import noisesearch
from noisesearch import ConfigError
from noisesearch.api import plan, replay_run
from noisesearch.config import RunConfig
from noisesearch.plugins import Registries
from noisesearch.recipes import decode_padded, replay

PROMPT = "a photo of a red apple on a wooden table"
COMPILED = {"compile": "default", "compile_backend": "eager"}

pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def registries() -> Iterator[Registries]:
    yield registries_with_brightness()
    torch._dynamo.reset()  # the compiled graphs of this module's models


def _search(tiny: Callable[[str], Path], registries: Registries, out: Path, **options: Any) -> Any:
    """5 candidates in batches of 2: the last batch has one real row."""
    return noisesearch.search(
        model="hf", model_options={"path": str(tiny("sd")), "height": IMAGE_SIZE, "width": IMAGE_SIZE,
                                   "guidance_scale": 3.0, **options},
        prompt=PROMPT, verifiers=["test-brightness"], evaluator="none", candidates=5, batch_size=2,
        steps=2, top_k=5, output=str(out), registries=registries,
    )


def test_compiled_search_equals_eager_and_a_padded_candidate_replays_exactly(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    eager = _search(tiny, registries, tmp_path / "eager")
    compiled = _search(tiny, registries, tmp_path / "compiled", **COMPILED)
    by_index = {c.index: c for c in eager.top}
    assert sorted(by_index) == [0, 1, 2, 3, 4]
    for candidate in compiled.top:
        torch.testing.assert_close(candidate.image, by_index[candidate.index].image, atol=1e-5, rtol=0)
    # Every denoiser batch of the compiled run had 2 rows: the lone last candidate ran padded.
    last = next(c for c in compiled.top if c.index == 4)
    assert [op["batch"] for op in last.recipe["ops"]] == [2]
    assert last.recipe["decode"] == {"batch": 1, "row": 0}  # decoding is not padded
    assert [op["batch"] for op in by_index[4].recipe["ops"]] == [1]  # eager: a batch of one
    run = json.loads((tmp_path / "compiled" / "run.json").read_text())
    assert run["config"]["model_options"]["compile"] == "default"
    assert run["denoiser_padding"]["fill"] == "last row repeated"

    # The padded candidate regenerated from its recipe alone, by a freshly loaded compiled model.
    model = registries.models.create("hf", path=str(tiny("sd")), height=IMAGE_SIZE, width=IMAGE_SIZE,
                                     guidance_scale=3.0, **COMPILED)
    assert model.static_batch and model.pipe.unet._compiled_call_impl is not None
    prepared = model.prepare(noisesearch.Condition(prompt=PROMPT))
    with torch.inference_mode():
        latent = replay(last.recipe, lambda x, s: model.denoise(x, s, prepared), model.schedule, "ddim",
                        tuple(model.latent_shape), model.device, model.dtype)
        image = decode_padded(lambda x: model.decode(x).float().clamp(0, 1), latent, **last.recipe["decode"])
    assert torch.equal(image, last.image)
    # And the winner through `noisesearch replay`.
    outcome = replay_run(tmp_path / "compiled", registries=registries)
    assert outcome.identical, outcome.max_abs_diff


def test_a_stochastic_native_solver_pads_its_step_seeds_and_replays_exactly(
    tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    """Euler ancestral draws step noise per row: the padding rows take the last row's seed, and
    each real row keeps its own, recorded in its solve op. (Mode reduce-overhead: its CUDA-graph
    step marks and output copies run too; with the eager backend there are no graphs.)"""
    out = tmp_path / "native"
    result = noisesearch.search(
        model="hf", model_options={"path": str(tiny("sd")), "height": IMAGE_SIZE, "width": IMAGE_SIZE,
                                   "guidance_scale": 3.0, "scheduler": "EulerAncestralDiscreteScheduler",
                                   **COMPILED, "compile": "reduce-overhead"},
        prompt=PROMPT, verifiers=["test-brightness"], evaluator="none", candidates=3, batch_size=2,
        steps=2, top_k=3, solver="native", output=str(out), registries=registries,
    )
    ops = {c.index: c.recipe["ops"][0] for c in result.top}
    assert {op["batch"] for op in ops.values()} == {2} and len({op["noise_seed"] for op in ops.values()}) == 3
    outcome = replay_run(out, registries=registries)
    assert outcome.identical, outcome.max_abs_diff


def test_an_automatic_batch_size_is_capped_at_the_candidates_it_would_pad_for(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    """The host's memory would allow 64 rows; padding 3 candidates to 64 would be 21x the work."""
    result = noisesearch.search(
        model="hf", model_options={"path": str(tiny("sd")), "height": IMAGE_SIZE, "width": IMAGE_SIZE,
                                   **COMPILED},
        prompt=PROMPT, verifiers=["test-brightness"], evaluator="none", candidates=3, steps=2,
        write=False, registries=registries,
    )
    assert result.config.batch_size == 3 and result.batch_size_from == "model default"


@pytest.mark.parametrize(("options", "field", "message"), [
    ({"compile": "fastest"}, "compile", "default, reduce-overhead, max-autotune"),
    ({"compile": "default", "cpu_offload": "sequential"}, "compile", "cpu_offload=sequential"),
    ({"compile_backend": "eager"}, "compile_backend", "only with --model-opt compile"),
    ({"compile": "default", "compile_backend": ""}, "compile_backend", "backend name"),
])
def test_compile_options_that_cannot_work_are_refused_while_planning(
    options: dict[str, Any], field: str, message: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        plan(RunConfig(model=f"hf:{tiny('sd')}", prompt=PROMPT, model_options=options), registries)
    assert refused.value.field == field


@pytest.mark.parametrize(("backend", "message"), [
    ("nonesuch", "unknown torch.compile backend 'nonesuch'"),
    ("inductor", "inductor on the CPU needs a C\\+\\+ compiler"),  # told to use a missing one
])
def test_a_backend_that_cannot_run_is_refused_before_the_weights_load(
    backend: str, message: str, tiny: Callable[[str], Path], registries: Registries,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers
    import torch._inductor.config

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", no_loading)
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-c++-compiler",)}), \
            pytest.raises(ConfigError, match=message):
        registries.models.create("hf", path=str(tiny("sd")), device="cpu", compile="default",
                                 compile_backend=backend)
