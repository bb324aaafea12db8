"""The diffusers adapters (``--model hf:<id-or-folder>`` and the presets).

Every family is tested on a tiny pipeline with random weights, built from configs and saved with
``save_pretrained`` (``tests/diffusers_tiny.py``), then loaded through the adapters' real path: the
registered ``hf`` model with ``path=folder``. The equivalence tests are the point: our sampler
(``noisesearch.sampling.solve`` over ``model.levels(steps)``) must reproduce the image that the
diffusers pipeline itself makes from the same initial latents, within ``ATOL``. Both run in this
process with the same thread count and batch composition (two candidates), so the remaining
difference is float32 rounding (about 1e-6 here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from diffusers_tiny import IMAGE_SIZE, registries_with_brightness
from typer.testing import CliRunner

import noisesearch
from noisesearch import Condition, ConfigError, IncompatibleError
from noisesearch.api import model_traits, plan
from noisesearch.cli import build_app
from noisesearch.config import RunConfig
from noisesearch.plugins import Registries, build_registries, get_plugin_manager
from noisesearch.registry import describe_parameters
from noisesearch.sampling import draw_noise, solve
from noisesearch.testing import ModelContract
from noisesearch_builtin.models.diffusers.base import CPU_BATCH_SIZE, DiffusersModel
from noisesearch_builtin.models.diffusers.dit import DiTModel, imagenet_class_names
from noisesearch_builtin.models.diffusers.flux import FluxModel
from noisesearch_builtin.models.diffusers.hf import SUPPORTED_PIPELINES
from noisesearch_builtin.models.diffusers.pixart import PixArtSigmaModel
from noisesearch_builtin.models.diffusers.presets import PRESETS
from noisesearch_builtin.models.diffusers.sd3 import StableDiffusion3Model
from noisesearch_builtin.models.diffusers.sdxl import StableDiffusionXLModel
from noisesearch_builtin.models.diffusers.stable_diffusion import StableDiffusionModel

#: Largest allowed pixel difference (images in [0, 1]) between our sampler and the pipeline.
ATOL = 1e-4
PROMPT = "a photo of a red apple on a wooden table"
GOLDEN_RETRIEVER = 207  # ImageNet class index
#: Strategies that must work on every family; others join here once registered.
_BUILTIN_STRATEGIES = build_registries(get_plugin_manager(load_entrypoints=False)).strategies
STRATEGIES = [s for s in ("random", "zero-order", "paths") if s in _BUILTIN_STRATEGIES]


# -- fixtures -------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def registries() -> Registries:
    return registries_with_brightness()


def _hf(registries: Registries, folder: Path, **options: Any) -> DiffusersModel:
    """The adapter, built the way a run builds it: the registered ``hf`` model with ``path``."""
    return registries.models.create("hf", path=str(folder), **options)


# -- equivalence with the diffusers pipelines ----------------------------------------------------

#: case -> (tiny family, our model options, Condition fields, pipeline call options).
EQUIVALENCE_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "sd-epsilon": ("sd", {"guidance_scale": 3.0}, {"negative_prompt": "blurry"}, {"guidance_scale": 3.0}),
    "sd-no-guidance": ("sd", {"guidance_scale": 1.0}, {}, {"guidance_scale": 1.0}),
    "sd-v-prediction": ("sd-v", {"guidance_scale": 3.0}, {}, {"guidance_scale": 3.0}),
    "sdxl-zero-uncond": ("sdxl", {"guidance_scale": 3.0}, {}, {"guidance_scale": 3.0}),
    "sd3": ("sd3", {"guidance_scale": 3.0}, {"negative_prompt": "blurry"}, {"guidance_scale": 3.0}),
    "flux-dev-embedded-guidance": ("flux", {"guidance_scale": 3.0}, {}, {"guidance_scale": 3.0}),
    "flux-true-cfg": (
        "flux", {"guidance_scale": 3.0, "true_cfg_scale": 2.0}, {"negative_prompt": "blurry"},
        {"guidance_scale": 3.0, "true_cfg_scale": 2.0},
    ),
    "flux-schnell": ("flux-schnell", {"max_sequence_length": 256}, {}, {"max_sequence_length": 256}),
    "pixart-sigma": (
        "pixart-sigma", {"guidance_scale": 3.0}, {}, {"guidance_scale": 3.0, "use_resolution_binning": False},
    ),
}


@pytest.mark.parametrize("case", list(EQUIVALENCE_CASES))
def test_our_sampler_reproduces_the_text_pipeline_from_the_same_latents(
    case: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    from diffusers import DiffusionPipeline

    family, options, condition_fields, call = EQUIVALENCE_CASES[case]
    steps, seeds = 4, [11, 12]
    model = _hf(registries, tiny(family), height=IMAGE_SIZE, width=IMAGE_SIZE, **options)
    condition = Condition(prompt=PROMPT, **condition_fields)
    noise = draw_noise(seeds, model.latent_shape)  # (2, C, h, w), what a search draws for these seeds
    levels = model.levels(steps)

    prepared = model.prepare(condition)
    with torch.inference_mode():
        solved = solve(lambda x, s: model.denoise(x, s, prepared), noise, model.schedule, levels)
        ours = model.decode(solved.x)  # (2, 3, H, W) in [0, 1]

    pipe = DiffusionPipeline.from_pretrained(tiny(family))
    pipe.set_progress_bar_config(disable=True)
    latents = noise
    if isinstance(model, FluxModel):  # FLUX's latents= are packed tokens
        latents = pipe._pack_latents(noise, len(seeds), *model.latent_shape)
    if condition.negative_prompt is not None:  # else each pipeline's own default ("" or zeros)
        call = {**call, "negative_prompt": [condition.negative_prompt] * len(seeds)}
    reference = pipe(
        prompt=[PROMPT] * len(seeds),
        latents=latents,
        num_inference_steps=steps,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        output_type="pt",
        **call,
    ).images  # (2, 3, H, W) in [0, 1]

    assert ours.shape == reference.shape == (len(seeds), 3, IMAGE_SIZE, IMAGE_SIZE)
    _assert_same_grid(model, pipe.scheduler, levels)
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
    assert reference.std() > 0.01  # a real image, not a constant that would match anything


def test_our_sampler_reproduces_the_dit_pipeline_for_a_named_label(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    """``DiTPipeline`` takes no latents: it draws ``randn((B, C, h, w))`` from the generator it is
    given, so the same draw from the same seed gives our sampler the same initial noise."""
    from diffusers import DiffusionPipeline

    steps, batch = 4, 2
    model = _hf(registries, tiny("dit"), guidance_scale=3.0)
    label = _plan(registries, model=f"hf:{tiny('dit')}", label="golden retriever").condition.label
    assert label == GOLDEN_RETRIEVER
    noise = torch.randn((batch, *model.latent_shape), generator=torch.Generator("cpu").manual_seed(5))
    prepared = model.prepare(Condition(label=label))
    levels = model.levels(steps)
    with torch.inference_mode():
        solved = solve(lambda x, s: model.denoise(x, s, prepared), noise, model.schedule, levels)
        ours = model.decode(solved.x)  # (2, 3, H, W) in [0, 1]

    pipe = DiffusionPipeline.from_pretrained(tiny("dit"))
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        class_labels=[label] * batch,
        guidance_scale=3.0,
        generator=torch.Generator("cpu").manual_seed(5),
        num_inference_steps=steps,
        output_type="pt",
    ).images

    _assert_same_grid(model, pipe.scheduler, levels)
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
    assert reference.std() > 0.01


def _assert_same_grid(model: DiffusersModel, scheduler: Any, levels: list[float]) -> None:
    """Our levels are the pipeline scheduler's own grid: ``(t + 1) / T`` of its timesteps (VP),
    or its sigmas (flows)."""
    if isinstance(model, (StableDiffusion3Model, FluxModel)):
        assert levels == pytest.approx(scheduler.sigmas.tolist(), abs=1e-7)
        return
    timesteps = [round(level * model.schedule.train_steps - 1) for level in levels]
    assert timesteps[: len(scheduler.timesteps)] == scheduler.timesteps.tolist()


def test_vp_levels_follow_ddim_leading_spacing_and_end_at_alphas_cumprod_0(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    model = _hf(registries, tiny("sd"))
    assert model.levels(4) == pytest.approx([0.752, 0.502, 0.252, 0.002, 0.001])  # t = 751 ... 1, then abar_0
    dit = _hf(registries, tiny("dit"))
    assert dit.levels(4) == pytest.approx([0.751, 0.501, 0.251, 0.001, 0.0])  # set_alpha_to_one: clean end


def test_a_pipeline_shipped_with_pndm_is_sampled_on_the_ddim_grid_of_its_configuration() -> None:
    """SD 1.5 ships PNDM (spacing "leading", steps_offset 1, set_alpha_to_one False): its grid is
    the one DDIM builds from that configuration."""
    from diffusers import PNDMScheduler
    from diffusers_tiny import build

    pipe = build("sd")
    pipe.scheduler = PNDMScheduler.from_config({**pipe.scheduler.config, "skip_prk_steps": True})
    model = StableDiffusionModel.from_pipeline(pipe)
    assert model.levels(4) == pytest.approx([0.752, 0.502, 0.252, 0.002, 0.001])


def test_a_seed_gives_the_flux_pipelines_own_noise_for_a_cpu_generator(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    """FLUX latents here are unpacked ``(C, h, w)``: a search candidate's seed reproduces
    ``FluxPipeline(generator=torch.Generator().manual_seed(seed))``."""
    from diffusers import DiffusionPipeline

    model = _hf(registries, tiny("flux"), height=IMAGE_SIZE, width=IMAGE_SIZE)
    pipe = DiffusionPipeline.from_pretrained(tiny("flux"))
    pipe.set_progress_bar_config(disable=True)
    packed, _ = pipe.prepare_latents(1, model.latent_shape[0], IMAGE_SIZE, IMAGE_SIZE, torch.float32,
                                     torch.device("cpu"), torch.Generator("cpu").manual_seed(3))
    ours = pipe._pack_latents(draw_noise([3], model.latent_shape), 1, *model.latent_shape)
    assert torch.equal(ours, packed)


# -- the Model contract, per family ---------------------------------------------------------------

#: contract family -> (adapter class, tiny family, options)
CONTRACT_FAMILIES: dict[str, tuple[type[DiffusersModel], str, dict[str, Any]]] = {
    "sd": (StableDiffusionModel, "sd-v", {"guidance_scale": 3.0}),
    "sdxl": (StableDiffusionXLModel, "sdxl", {"guidance_scale": 3.0}),
    "sd3": (StableDiffusion3Model, "sd3", {"guidance_scale": 3.0, "max_sequence_length": 32}),
    "flux": (FluxModel, "flux", {"max_sequence_length": 32, "height": IMAGE_SIZE, "width": IMAGE_SIZE}),
    "pixart-sigma": (PixArtSigmaModel, "pixart-sigma", {"guidance_scale": 3.0, "max_sequence_length": 32}),
    "dit": (DiTModel, "dit", {"guidance_scale": 3.0}),
}
_contract_models: dict[str, DiffusersModel] = {}


class _TinyPipelineContract(ModelContract):
    """The core's model contract on a tiny pipeline (one model per family, shared by the tests)."""

    family: ClassVar[str]

    @pytest.fixture(autouse=True)
    def _tiny_folder(self, tiny: Callable[[str], Path]) -> Iterator[None]:
        self._folder = tiny(CONTRACT_FAMILIES[self.family][1])
        yield

    def make_model(self) -> DiffusersModel:
        adapter, _, options = CONTRACT_FAMILIES[self.family]
        if self.family not in _contract_models:
            _contract_models[self.family] = adapter(path=str(self._folder), **options)
        return _contract_models[self.family]


class TestStableDiffusionContract(_TinyPipelineContract):
    family = "sd"
    model_factory = StableDiffusionModel


class TestStableDiffusionXLContract(_TinyPipelineContract):
    family = "sdxl"
    model_factory = StableDiffusionXLModel


class TestStableDiffusion3Contract(_TinyPipelineContract):
    family = "sd3"
    model_factory = StableDiffusion3Model


class TestFluxContract(_TinyPipelineContract):
    family = "flux"
    model_factory = FluxModel


class TestPixArtSigmaContract(_TinyPipelineContract):
    family = "pixart-sigma"
    model_factory = PixArtSigmaModel


class TestDiTContract(_TinyPipelineContract):
    family = "dit"
    model_factory = DiTModel


# -- searching every family with every strategy ---------------------------------------------------

SEARCH_FAMILIES = ["sd", "sdxl", "sd3", "flux", "pixart-sigma", "dit"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("family", SEARCH_FAMILIES)
def test_every_strategy_searches_every_family(
    family: str, strategy: str, tiny: Callable[[str], Path], registries: Registries
) -> None:
    condition = {"label": 3} if family == "dit" else {"prompt": PROMPT}
    size = {} if family == "dit" else {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    result = noisesearch.search(
        model="hf",
        model_options={"path": str(tiny(family)), **size},
        verifiers=["test-brightness"],
        evaluator="none",
        strategy=strategy,
        candidates=4,
        steps=3,
        write=False,
        registries=registries,
        **condition,
    )
    assert result.usage.candidates >= 1 and result.usage.nfe >= result.usage.candidates
    assert result.best.objective == max(c.objective for c in result.top)
    image = result.best.image
    assert image is not None and image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


def test_a_random_search_winner_regenerates_from_its_noise(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    result = noisesearch.search(
        model="hf", model_options={"path": str(tiny("sd"))}, prompt=PROMPT, verifiers=["test-brightness"],
        evaluator="none", candidates=6, steps=3, write=False, registries=registries, batch_size=3,
    )
    model = _hf(registries, tiny("sd"))
    prepared = model.prepare(result.condition)
    with torch.inference_mode():
        x = solve(lambda x, s: model.denoise(x, s, prepared), result.best.noise[None], model.schedule,
                  model.levels(3)).x
        image = model.decode(x)[0]
    torch.testing.assert_close(image, result.best.image, atol=ATOL, rtol=0)


def test_kept_images_hold_no_autograd_graph(tiny: Callable[[str], Path], registries: Registries) -> None:
    """The VAE's weights keep requires_grad: a decode outside inference mode made every kept image
    hold its batch's whole autograd graph (out of memory at DiT-XL/2 size on an H200)."""
    result = noisesearch.search(
        model="hf", model_options={"path": str(tiny("sd"))}, prompt=PROMPT, verifiers=["test-brightness"],
        evaluator="none", candidates=4, steps=2, write=False, registries=registries, batch_size=2,
    )
    assert any(p.requires_grad for p in _hf(registries, tiny("sd")).pipe.vae.parameters())
    for candidate in result.top:
        assert candidate.image is not None and candidate.image.grad_fn is None
        assert not candidate.image.requires_grad


@pytest.mark.parametrize(("family", "strategy"), [("sd", "random"), ("flux", "paths")])
def test_replay_regenerates_a_diffusers_winner_bit_for_bit(
    family: str, strategy: str, tiny: Callable[[str], Path], registries: Registries, tmp_path: Path
) -> None:
    """Denoiser *and* VAE batches are put back at the batch size and row they ran in."""
    from noisesearch.api import replay_run

    out = tmp_path / "run"
    noisesearch.search(
        model="hf", model_options={"path": str(tiny(family))}, prompt=PROMPT, verifiers=["test-brightness"],
        evaluator="none", budget_nfe=60, steps=3, batch_size=5, strategy=strategy, output=str(out),
        registries=registries,
    )
    outcome = replay_run(out, registries=registries)
    assert outcome.identical, outcome.max_abs_diff
    # The image is identical; a verifier's reduction over a batch of one may round differently.
    assert outcome.score == pytest.approx(outcome.recorded_score, abs=1e-6)


def test_cli_searches_a_saved_pipeline_folder_with_a_text_verifier(
    tiny: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``noisesearch run --model hf:./folder --prompt ... --verifier clip-score``, end to end, with a
    tiny CLIP registered in open_clip and saved as a local checkpoint."""
    from clip_tiny import register_tiny_clip, save_tiny_clip

    monkeypatch.setenv("NOISESEARCH_LOAD_PLUGINS", "")
    architecture = register_tiny_clip(tmp_path / "clip-config")
    checkpoint = save_tiny_clip(tmp_path / "tiny-clip.pt")
    monkeypatch.chdir(tiny("sd").parent)
    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), [
        "run", "--model", "hf:./sd", "--prompt", PROMPT, "--verifier", "clip-score",
        "--verifier-opt", f"clip-score.model={architecture}",
        "--verifier-opt", f"clip-score.pretrained={checkpoint}",
        "--evaluator", "none", "--candidates", "2", "--steps", "2", "-o", str(out), "-q",
    ])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    # recorded absolute: replay, --resume and --config run.json mean this folder from anywhere
    assert run["config"]["model"] == "hf"
    assert run["config"]["model_options"]["path"] == str(tiny("sd").resolve())
    assert run["usage"]["candidates"] == 2 and run["nfe_per_candidate"] == 2
    assert (out / "best.png").exists()
    # hf runs are told apart by their pipeline: the folder's name, not just "hf"
    for command in (["show", str(out)], ["runs", str(tmp_path)]):
        shown = CliRunner().invoke(build_app(), command)
        assert shown.exit_code == 0 and "hf:sd" in shown.output, shown.output
    monkeypatch.chdir(tmp_path)  # where ./sd is nothing (it was read as a hub id before)
    replayed = CliRunner().invoke(build_app(), ["replay", str(out)])
    assert replayed.exit_code == 0 and "Traceback" not in replayed.output, replayed.output


def test_models_hf_lists_the_adapters_options_and_hf_path_its_familys(tiny: Callable[[str], Path]) -> None:
    """``noisesearch models hf`` shows what ``--model-opt`` takes beyond hf's own keywords (the
    options every adapter shares), and ``models hf:PATH`` the options of that pipeline's family."""
    shared = CliRunner().invoke(build_app(), ["models", "hf"])
    assert shared.exit_code == 0, shared.output
    for option in ("scheduler", "lora", "init_image", "compile", "guidance_rescale"):
        assert f"--model-opt {option}=" in shared.output
    flux = CliRunner().invoke(build_app(), ["models", f"hf:{tiny('flux')}"])
    assert flux.exit_code == 0, flux.output
    assert "--model-opt true_cfg_scale=" in flux.output and "--model-opt max_sequence_length=" in flux.output
    assert "true_cfg_scale" not in shared.output  # a family's own option, not every adapter's


def test_local_paths_in_hf_options_are_made_absolute_and_hub_ids_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from noisesearch_builtin.models.diffusers.hf import normalize_options

    (tmp_path / "adapter").mkdir()
    (tmp_path / "init.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    out = normalize_options(path="owner/model", init_image="init.png",
                            lora=["adapter:0.5", "owner/lora", "gone"], height=16)
    assert out == {"path": "owner/model", "init_image": str(tmp_path.resolve() / "init.png"),
                   "lora": [f"{tmp_path.resolve() / 'adapter'}:0.5", "owner/lora", "gone"], "height": 16}
    assert normalize_options(lora="adapter")["lora"] == str(tmp_path.resolve() / "adapter")


# -- planning: traits, presets and bad input, before any weights load ---------------------------


def _plan(registries: Registries, **fields: Any) -> Any:
    fields.setdefault("verifiers", ["test-brightness"])
    return plan(RunConfig(**fields), registries)


def test_hf_describes_each_family_from_its_json_files(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    entry = registries.models.get("hf")
    for family in ("sd", "sdxl", "sd3", "flux", "pixart-sigma"):
        assert model_traits(entry, {"path": str(tiny(family))})["conditioning"] == "prompt"
    traits = model_traits(entry, {"path": str(tiny("dit"))})
    assert traits["conditioning"] == "label" and traits["num_classes"] == 1000
    assert traits["class_names"][GOLDEN_RETRIEVER] == "golden retriever"
    assert model_traits(entry, {"path": str(tiny("flux"))})["default_steps"] == 30


def _cache_model_index(cache: Path, repo_id: str, class_name: str) -> None:
    """``model_index.json`` of ``repo_id`` in a hub cache laid out as huggingface_hub does."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": class_name}))


def test_presets_plan_without_network_and_fill_in_the_papers_steps(
    registries: Registries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the local hub cache alone (a preset's model_index.json is read, so that one neither
    cached nor reachable fails while planning: tests/test_loading_safety.py)."""
    from huggingface_hub import constants

    for name, pipeline in (("flux-dev", "FluxPipeline"), ("pixart-sigma", "PixArtSigmaPipeline"),
                           ("flux-schnell", "FluxPipeline"), ("dit-xl-256", "DiTPipeline")):
        _cache_model_index(tmp_path, PRESETS[name].default_path, pipeline)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _plan(registries, model="flux-dev", prompt=PROMPT).steps == 30
    assert _plan(registries, model="pixart-sigma", prompt=PROMPT).steps == 30
    assert _plan(registries, model="flux-schnell", prompt=PROMPT).steps == 4
    dit = _plan(registries, model="dit-xl-256", label="golden retriever")
    assert dit.steps == 50 and dit.condition.label == GOLDEN_RETRIEVER


def test_every_registered_diffusers_model_documents_every_option(registries: Registries) -> None:
    for name in ["hf", *PRESETS]:
        factory = registries.models.get(name).factory
        undocumented = [p.name for p in describe_parameters(factory) if not p.help]
        assert not undocumented, (name, undocumented)
    flux_options = {p.name for p in describe_parameters(PRESETS["flux-dev"])}
    assert {"max_sequence_length", "true_cfg_scale"} <= flux_options


@pytest.mark.parametrize(
    ("family", "fields", "error", "message"),
    [
        ("dit", {"prompt": "a cat"}, IncompatibleError, "class-conditional"),
        ("sd", {"label": 3}, IncompatibleError, "text-conditioned"),
        ("dit", {"label": "golden retreiver"}, ConfigError, "Did you mean: golden retriever"),
        ("dit", {"label": 1000}, ConfigError, "must be in 0..999"),
        ("sd", {"prompt": "x", "model_options": {"true_cfg_scale": 2.0}}, ConfigError,
         "not an option of StableDiffusionModel"),
    ],
)
def test_bad_condition_or_option_fails_at_planning(
    family: str, fields: dict[str, Any], error: type[Exception], message: str,
    tiny: Callable[[str], Path], registries: Registries,
) -> None:
    with pytest.raises(error, match=message):
        _plan(registries, model=f"hf:{tiny(family)}", **fields)


def test_family_options_pass_through_hf(tiny: Callable[[str], Path], registries: Registries) -> None:
    checked = _plan(registries, model=f"hf:{tiny('flux')}", prompt="x", negative_prompt="blurry",
                    model_options={"max_sequence_length": 64, "true_cfg_scale": 2.0})
    assert checked.config.model_options["max_sequence_length"] == 64


def test_missing_folder_and_folder_without_model_index_are_config_errors(
    tmp_path: Path, registries: Registries
) -> None:
    with pytest.raises(ConfigError, match="local folder './nowhere/pipe' does not exist"):
        _plan(registries, model="hf:./nowhere/pipe", prompt="x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no model_index.json"):
        _plan(registries, model=f"hf:{tmp_path / 'empty'}", prompt="x")


def test_unsupported_pipeline_class_lists_the_supported_ones(tmp_path: Path, registries: Registries) -> None:
    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(IncompatibleError) as caught:
        _plan(registries, model=f"hf:{folder}", prompt="x")
    message = str(caught.value)
    assert "KandinskyV22Pipeline" in message
    assert all(name in message for name in SUPPORTED_PIPELINES)


def test_a_preset_pointed_at_another_family_says_so(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    with pytest.raises(IncompatibleError, match="holds a DiTPipeline"):
        _plan(registries, model="sd15", prompt="x", model_options={"path": str(tiny("dit"))})


def test_uncached_hub_id_offline_is_a_config_error(
    registries: Registries, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        _plan(registries, model="hf:nobody/no-such-pipeline", prompt="x")


def test_cli_bad_input_exits_2_without_traceback(tiny: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = CliRunner().invoke(build_app(), ["run", "--model", f"hf:{tiny('dit')}", "--prompt", "a cat",
                                              "--verifier", "digits-evaluator", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "class-conditional" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_bad_resolution_names_the_field(tiny: Callable[[str], Path], registries: Registries) -> None:
    with pytest.raises(ConfigError, match="height: must be a positive multiple of 2"):
        _hf(registries, tiny("sd"), height=15)


# -- memory policy and cheap imports -------------------------------------------------------------


def test_cpu_batch_size_follows_host_memory_and_latents_stay_float32(
    tiny: Callable[[str], Path], registries: Registries, monkeypatch: pytest.MonkeyPatch
) -> None:
    from noisesearch_builtin.models.diffusers import base, memory

    model = _hf(registries, tiny("dit"))
    assert model.device.type == "cpu" and memory.host_available() > 0
    tokens, width = model._activation_size()
    per_candidate = base.ACTIVATION_FACTOR * tokens * width * 4 * (2 if model._guided() else 1)
    room_for = {8: int(per_candidate * 8.5 / base.MEMORY_FRACTION), base.MAX_BATCH_SIZE: 10**15}
    for expected, available in room_for.items():
        monkeypatch.setattr(memory, "host_available", lambda available=available: available)
        assert model.preferred_batch_size == expected
    monkeypatch.setattr(memory, "host_available", lambda: None)  # unreadable: the fixed fallback
    assert model.preferred_batch_size == CPU_BATCH_SIZE
    assert model.decode_batch_size() == CPU_BATCH_SIZE
    assert model.dtype == torch.float32 and model.weights_dtype == torch.float32


def test_a_pipeline_in_memory_wraps_like_a_loaded_one(
    tiny: Callable[[str], Path], registries: Registries
) -> None:
    from diffusers_tiny import build

    loaded = _hf(registries, tiny("dit"), guidance_scale=2.0)
    wrapped = DiTModel.from_pipeline(build("dit"), guidance_scale=2.0)
    x = draw_noise([1, 2], loaded.latent_shape)
    with torch.inference_mode():
        ours = wrapped.denoise(x, 0.5, wrapped.prepare(Condition(label=1)))
        theirs = loaded.denoise(x, 0.5, loaded.prepare(Condition(label=1)))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert wrapped.levels(4) == loaded.levels(4) and wrapped.path == "<in-memory pipeline>"


def test_imagenet_names_are_unique_and_in_index_order() -> None:
    names = imagenet_class_names()
    assert len(names) == len(set(names)) == 1000
    assert names[0] == "tench" and names[GOLDEN_RETRIEVER] == "golden retriever"


def test_importing_the_plugin_imports_neither_torch_nor_diffusers() -> None:
    code = (
        "import sys, noisesearch_builtin.models.diffusers.plugin as p; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'; "
        "print(p.register_models.__name__)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "register_models"
