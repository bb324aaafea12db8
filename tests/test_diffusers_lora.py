"""LoRA adapters (``--model-opt lora=PATH[:SCALE]``) on the tiny SD and FLUX pipelines.

A tiny LoRA is built with peft (random, non-zero up-projections so that it changes the image) and
saved with diffusers' ``save_lora_weights``; our model with ``lora=`` must equal the diffusers
pipeline given the same adapters with ``load_lora_weights`` and ``set_adapters``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers_tiny import IMAGE_SIZE, build, registries_with_brightness, save
from typer.testing import CliRunner

import noisesearch
from noisesearch import Condition, ConfigError, NoiseSearchError
from noisesearch.api import plan
from noisesearch.cli import build_app
from noisesearch.config import RunConfig
from noisesearch.plugins import Registries, build_registries, get_plugin_manager
from noisesearch.sampling import draw_noise, solve
from noisesearch_builtin.models.diffusers import lora as lora_loader

ATOL = 1e-4
PROMPT = "a photo of a red apple on a wooden table"


pytestmark = pytest.mark.usefixtures("plain_kernels")


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save("sd", tmp_path_factory.mktemp("lora") / "sd")


#: family -> (its pipeline class, the network the LoRA adapts, save_lora_weights' argument for it)
LORA_TARGETS = {"sd": ("StableDiffusionPipeline", "unet", "unet_lora_layers"),
                "flux": ("FluxPipeline", "transformer", "transformer_lora_layers")}


def _tiny_lora(folder: Path, seed: int, family: str = "sd", text_encoder: bool = False) -> Path:
    """A rank-2 LoRA on the tiny family network's attention projections (the UNet's; FLUX's joint
    and single blocks), and with ``text_encoder`` on the text encoder's too, saved as diffusers
    saves one."""
    import diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipeline, component, argument = LORA_TARGETS[family]
    tiny = build(family)
    network = getattr(tiny, component)
    torch.manual_seed(seed)
    network.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                   init_lora_weights=False))
    layers = {argument: get_peft_model_state_dict(network)}
    if text_encoder:
        config = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                            init_lora_weights=False)
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(
            inject_adapter_in_model(config, tiny.text_encoder))  # transformers' add_adapter wants peft 0.22
    getattr(diffusers, pipeline).save_lora_weights(folder, **layers)
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [_tiny_lora(root / "a", 1), _tiny_lora(root / "b", 2)]


@pytest.fixture(scope="module")
def registries() -> Registries:
    return build_registries(get_plugin_manager(load_entrypoints=False))


def _ours(registries: Registries, sd: Path, noise: torch.Tensor, **options: Any) -> torch.Tensor:
    model = registries.models.create("hf", path=str(sd), height=IMAGE_SIZE, width=IMAGE_SIZE,
                                     guidance_scale=3.0, **options)
    prepared = model.prepare(Condition(prompt=PROMPT))
    with torch.inference_mode():
        x = solve(lambda x, s: model.denoise(x, s, prepared), noise, model.schedule, model.levels(3)).x
        return model.decode(x)


def test_our_lora_result_equals_the_pipeline_with_the_same_adapters(
    sd: Path, loras: list[Path], registries: Registries
) -> None:
    from diffusers import DiffusionPipeline

    noise = draw_noise([3, 4], (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2))
    # Two adapters, the second at scale 0.5: a file path and a folder.
    ours = _ours(registries, sd, noise, lora=[str(loras[0]), f"{loras[1].parent}:0.5"])
    plain = _ours(registries, sd, noise)

    pipe = DiffusionPipeline.from_pretrained(sd)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(loras[0].parent), adapter_name="first")
    pipe.load_lora_weights(str(loras[1].parent), adapter_name="second")
    pipe.set_adapters(["first", "second"], adapter_weights=[1.0, 0.5])
    reference = pipe(prompt=[PROMPT] * 2, latents=noise, num_inference_steps=3, height=IMAGE_SIZE,
                     width=IMAGE_SIZE, guidance_scale=3.0, output_type="pt").images

    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
    assert (ours - plain).abs().max() > 1e-3  # the adapters did change the image


def test_lora_option_parsing() -> None:
    assert lora_loader.parse("a.safetensors:0.7") == [lora_loader.LoraSpec("a.safetensors", 0.7)]
    assert lora_loader.parse(["x/y", "/p/q.safetensors"]) == [
        lora_loader.LoraSpec("x/y", 1.0), lora_loader.LoraSpec("/p/q.safetensors", 1.0)
    ]
    with pytest.raises(ConfigError, match="no LoRA loader"):
        lora_loader.check(lora_loader.parse("owner/name"), "PixArtSigmaPipeline")


def test_a_missing_lora_file_is_refused_while_planning(
    sd: Path, tmp_path: Path, registries: Registries
) -> None:
    with pytest.raises(ConfigError, match="no LoRA file"):
        plan(RunConfig(model=f"hf:{sd}", prompt=PROMPT,
                       model_options={"lora": str(tmp_path / "missing.safetensors")}), registries)
    pickled = tmp_path / "weights.bin"
    pickled.write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a .safetensors file"):
        plan(RunConfig(model=f"hf:{sd}", prompt=PROMPT, model_options={"lora": str(pickled)}), registries)


def test_cli_repeated_lora_missing_file_exits_2(sd: Path, loras: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), [
        "run", "--model", f"hf:{sd}", "--prompt", PROMPT, "--candidates", "1", "--steps", "2",
        "--model-opt", f"lora={loras[0]}", "--model-opt", f"lora={tmp_path / 'nope.safetensors'}:0.5",
        "-o", str(out),
    ])
    assert result.exit_code == 2, result.output
    assert "nope.safetensors" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_a_lora_for_another_architecture_is_a_config_error(
    sd: Path, tmp_path: Path, registries: Registries
) -> None:
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"  # keys no SD UNet has
    save_file({"transformer.blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 7),
               "transformer.blocks.0.attn.to_q.lora_B.weight": torch.zeros(7, 2)}, str(wrong))
    with pytest.raises(ConfigError, match="matches no layer|cannot load the LoRA"):
        registries.models.create("hf", path=str(sd), lora=str(wrong))


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save("flux", tmp_path_factory.mktemp("lora") / "flux")


def test_our_flux_lora_result_equals_the_flux_pipeline_with_the_same_adapters(
    flux: Path, tmp_path: Path, registries: Registries
) -> None:
    from diffusers import DiffusionPipeline

    from noisesearch.sampling import resolve_solver

    loras = [_tiny_lora(tmp_path / "a", 1, "flux"), _tiny_lora(tmp_path / "b", 2, "flux")]

    def ours(**options: Any) -> torch.Tensor:
        model = registries.models.create("hf", path=str(flux), height=IMAGE_SIZE, width=IMAGE_SIZE,
                                         guidance_scale=3.0, **options)
        solver = resolve_solver(model, "native", 3)  # the pipeline's own flow-match Euler
        prepared = model.prepare(Condition(prompt=PROMPT))
        with torch.inference_mode():
            x = solve(lambda x, s: model.denoise(x, s, prepared), noise, model.schedule,
                      solver.levels(3), solver).x
            return model.decode(x)

    noise = draw_noise([3, 4], (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2))  # (2, 4, h, w), unpacked
    with_loras = ours(lora=[str(loras[0]), f"{loras[1].parent}:0.5"])
    plain = ours()

    pipe = DiffusionPipeline.from_pretrained(flux)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(loras[0].parent), adapter_name="first")
    pipe.load_lora_weights(str(loras[1].parent), adapter_name="second")
    pipe.set_adapters(["first", "second"], adapter_weights=[1.0, 0.5])
    latents = pipe._pack_latents(noise, 2, *noise.shape[1:])  # FLUX takes packed latents
    reference = pipe(prompt=[PROMPT] * 2, latents=latents, num_inference_steps=3, height=IMAGE_SIZE,
                     width=IMAGE_SIZE, guidance_scale=3.0, output_type="pt").images

    torch.testing.assert_close(with_loras, reference, atol=ATOL, rtol=0)
    assert (with_loras - plain).abs().max() > 1e-3  # the adapters did change the image


# -- a pipeline in memory (search(model=pipe, model_options={"lora": ...})) ---------------------


def _adapter_state(pipe: Any) -> dict[str, Any]:
    """All a pipeline holds of LoRAs: its adapters, the module tree with each LoRA layer's active
    adapters, switch and scales, and each network's peft bookkeeping."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    state: dict[str, Any] = {"list": pipe.get_list_adapters(), "active": pipe.get_active_adapters()}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            state[name] = [
                (key, type(m).__name__, list(m.active_adapters), m.disable_adapters, dict(m.scaling),
                 {n: p.requires_grad for n, p in m.named_parameters() if "lora" in n})
                if isinstance(m, BaseTunerLayer) else (key, type(m).__name__)
                for key, m in component.named_modules()
            ]
            state[f"{name} peft"] = {key: dict(value) if isinstance(value, dict) else value
                                     for key, value in vars(component).items()
                                     if key in ("peft_config", "_hf_peft_config_loaded")}
    return state


def _search_pipe(pipe: Any, fields: dict[str, Any] | None = None, **options: Any) -> torch.Tensor:
    """The best image of a search of ``pipe`` with the model options ``options``."""
    result = noisesearch.search(model=pipe, prompt=PROMPT, verifiers=["test-brightness"], candidates=2,
                                steps=2, registries=registries_with_brightness(), **(fields or {}),
                                model_options={"guidance_scale": 3.0, "height": IMAGE_SIZE,
                                               "width": IMAGE_SIZE, **options})
    return result.best.image


def _users_pipe(sd: Path, *adapters: tuple[Path, str, float]) -> Any:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd)
    pipe.set_progress_bar_config(disable=True)
    for path, name, _ in adapters:
        pipe.load_lora_weights(str(path.parent), adapter_name=name)
    if adapters:
        pipe.set_adapters([name for _, name, _ in adapters], adapter_weights=[w for _, _, w in adapters])
    return pipe


def test_a_lora_option_on_a_users_pipeline_adds_to_the_users_adapters_and_gives_them_back(
    sd: Path, loras: list[Path], tmp_path: Path
) -> None:
    """The user's active adapters (UNet and text encoder, scale 0.7) compute next to ours during the
    search; afterwards the pipeline's adapters are as the user left them, and a loop of searches
    with and without the option gives the same images each time."""
    style = _tiny_lora(tmp_path / "style", 3, text_encoder=True)
    pipe = _users_pipe(sd, (style, "style", 0.7))
    before = _adapter_state(pipe)
    assert before["list"] == {"unet": ["style"], "text_encoder": ["style"]}

    plain = _search_pipe(pipe)
    with_ours = _search_pipe(pipe, lora=str(loras[0]))
    assert _adapter_state(pipe) == before  # ours deleted, the user's as they were
    assert torch.equal(_search_pipe(pipe, lora=str(loras[0])), with_ours)  # the name is free again
    assert torch.equal(_search_pipe(pipe), plain)  # ours left nothing behind
    assert _adapter_state(pipe) == before

    # What a diffusers user gets with both adapters active, the user's at 0.7.
    both = _search_pipe(_users_pipe(sd, (style, "style", 0.7), (loras[0], "mine", 1.0)))
    torch.testing.assert_close(with_ours, both, atol=ATOL, rtol=0)
    assert (with_ours - plain).abs().max() > 1e-3


def test_our_adapters_leave_a_users_pipeline_with_its_model(
    sd: Path, loras: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline without LoRAs is the same module tree again after a search with ours, a refused
    one and a failed one too (``search()`` closes the model it wrapped); a model still holding ours
    (one the user wrapped) gives them up when the pipeline is wrapped again, and then refuses to
    run; ``close()`` gives them up at once."""
    from noisesearch_builtin.models.diffusers.hf import wrap
    from noisesearch_builtin.models.diffusers.stable_diffusion import StableDiffusionModel

    pipe = _users_pipe(sd)
    before = _adapter_state(pipe)
    plain = _search_pipe(pipe)
    _search_pipe(pipe, lora=str(loras[0]))
    assert _adapter_state(pipe) == before
    for fields, options in [({}, {"clip_skip": 99}),  # refused by the model, its LoRAs loaded
                            ({"strategy_options": {"rounds": 0}}, {})]:  # while planning, after it
        try:
            _search_pipe(pipe, fields, lora=str(loras[0]), **options)
        except ConfigError:
            pass
        else:
            raise AssertionError(f"{fields} {options} was not refused")
        assert _adapter_state(pipe) == before

    def fail(*args: Any) -> None:
        raise RuntimeError("decoding failed")

    monkeypatch.setattr(StableDiffusionModel, "decode", fail)
    with pytest.raises(NoiseSearchError, match="decoding failed") as failed:
        _search_pipe(pipe, lora=str(loras[0]))
    monkeypatch.undo()
    assert _adapter_state(pipe) == before  # search() closes the model it wrapped, failed or not
    assert torch.equal(_search_pipe(pipe), plain)
    del failed

    held = wrap(pipe, lora=str(loras[0]), height=IMAGE_SIZE, width=IMAGE_SIZE)
    assert pipe.get_active_adapters() == ["noisesearch_lora0"]
    assert torch.equal(_search_pipe(pipe), plain)
    with pytest.raises(ConfigError, match="taken out of its pipeline"):
        held.prepare(Condition(prompt=PROMPT))
    assert _adapter_state(pipe) == before

    held = wrap(pipe, lora=str(loras[0]), height=IMAGE_SIZE, width=IMAGE_SIZE)
    held.close()
    held.close()
    assert _adapter_state(pipe) == before


def test_a_quiet_run_with_loras_prints_no_library_warnings(
    sd: Path, loras: list[Path], tmp_path: Path
) -> None:
    """diffusers' "No LoRA keys associated to CLIPTextModel" and peft's "Already found a
    peft_config attribute" are loading advice, hidden by --quiet as the weights' is; the run's
    winner replays bit for bit."""
    import os
    import subprocess
    import sys

    script = str(Path(sys.executable).parent / "noisesearch")
    env = {**os.environ, "NOISESEARCH_LOAD_PLUGINS": "", "NOISESEARCH_VERBOSE": ""}
    out = tmp_path / "run"
    run = subprocess.run([
        script, "run", "--model", f"hf:{sd}", "--prompt", "a red circle", "--candidates", "1",
        "--steps", "2", "--verifier", "shapes-clip", "--evaluator", "none", "-q", "-o", str(out),
        "--model-opt", f"lora={loras[0]}", "--model-opt", f"lora={loras[1].parent}:0.5",
    ], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "LoRA" not in run.stderr and "peft" not in run.stderr and "Warning" not in run.stderr, run.stderr
    replay = subprocess.run([script, "replay", str(out)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert replay.returncode == 0, replay.stderr
    assert "identical (bit for bit)" in replay.stdout and replay.stderr == "", replay.stdout + replay.stderr
