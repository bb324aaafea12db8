"""Throughput of the diffusers adapters against the raw batched denoiser, in one process.

Per model, at real sizes with random weights (configs written here, nothing from the hub), it
times these arms in candidate-NFEs per second (one NFE = one denoiser evaluation of one candidate;
a classifier-free-guidance step is one NFE, its two branches run in one batched forward):

- ``raw``: the network's forward alone (UNet or transformer) on the guidance-doubled batch of
  ``batch`` candidates, with exactly the inputs the adapter passes it (captured by a forward hook);
- ``hand``: a minimal hand-written batched loop: the adapter's ``denoise``, a DDIM update, the
  VAE decode and the verifier, nothing else;
- ``search``: ``noisesearch.search`` (random search) with its journal, candidates writer, run
  folder and evaluator, on a pipeline written by ``save_pretrained`` to a temporary folder and
  loaded through the ``hf:`` adapter; the timed searches reuse that loaded model and the verifiers
  (a first, untimed "cold" search loads the folder itself, as ``noisesearch run`` would);
- ``loop``: diffusers' own pipeline call, once per candidate, scored by the same verifier;
- ``compiled`` vs ``eager`` (DiT-XL/2 and the SD 1.5 UNet only): the raw forward under
  ``torch.compile`` (static shapes) against the same forward eager; then the ``search`` arm on
  a second copy of the model loaded with ``--model-opt compile=MODE`` (``search-compiled``: the
  option's real path, batches padded to the batch size) against the eager model's search
  (``search-eager``), after every model's raw compile section, where the budget leaves time;
  ``--no-compile-search`` leaves these two out;
- ``search-overlap`` vs ``search``: the same search with ``overlap=True`` (``--overlap``: the
  next batch denoised on a worker thread while the last one is decoded, scored and recorded)
  against the plain search, interleaved with the same seed per repetition (the results must be
  the same: ``same_best`` per repetition); last of all, after the compiled search, so that a
  short budget loses it first; ``--no-overlap`` leaves it out.

Repetitions are interleaved (raw, hand, search, loop, raw, hand, ...) after one untimed warm-up of
each arm; every ratio is taken within a repetition and reported as median and spread (min, max),
with ``torch.cuda.max_memory_allocated`` per arm. Targets: search >= 0.9x raw, compiled >= 1.25x
eager. Verifiers: CLIP ViT-L/14 with random weights (``clip-score`` for prompts, ``clip-zeroshot``
with one template for DiT's labels) and the LAION aesthetic MLP (random) as the evaluator.

Models: DiT-XL/2 256 px fp16, SD 1.5 512 px fp16 (UNet 860 M, CLIP ViT-L text encoder, SD's VAE),
and, when asked for (``--models ... flux``), the FLUX.1-dev transformer at 1024 px in bf16 (12 B
parameters, eager only; its T5 is one layer of the real width). FLUX is not written to disk
(24 GB): its search arm runs the model built in memory through ``noisesearch.search(model=<built
model>)`` (else planned as the ``flux-dev`` preset, which needs the hub), and is skipped with a
note when neither works offline. FLUX does not fit in the default 8-minute budget with the two
others: run it on its own (then its overlap section runs too: the model is kept).

The script keeps to ``--budget`` seconds: each section has a time limit, runs as many repetitions
as fit, and the sections that no longer fit are skipped with a note. Sections run oldest arms
first (every model's main arms, then raw compile, compiled search, overlap), so a short budget
loses the newest. From the H200 run's section times (main and raw compile ~220 s for both
models), the default 420 s leaves the overlap sections no time after the compiled search;
``--no-compile-search`` makes room for them (~360 s in all). ``--out`` JSON is rewritten after
every measurement, so a run cut short still leaves its results.

On the lent H200 (no diffusers nor open_clip there: carry their wheels, see benchmarks/README-gpu.md):

    python3 benchmarks/diffusers_throughput.py --out throughput.json          # DiT + SD 1.5, <= 7 min
    python3 benchmarks/diffusers_throughput.py --no-compile-search --out o.json  # with the overlap arms
    python3 benchmarks/diffusers_throughput.py --models flux --out flux.json  # FLUX.1-dev alone
    python3 benchmarks/diffusers_throughput.py --tiny --out tiny.json         # CPU smoke check

``--tiny`` runs every arm on the tests' tiny pipelines and a tiny CLIP, on the CPU, with
``torch.compile``'s ``eager`` backend (no C++ compiler needed); its numbers say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny pipelines, tokenizers and the tiny CLIP
for _folder in ("core", "plugins"):  # run from a checkout without installing it
    if str(ROOT / _folder) not in sys.path:
        sys.path.append(str(ROOT / _folder))

PROMPT = "a photograph of a red apple on a wooden table"
GOLDEN_RETRIEVER = 207
SEARCH_TARGET = 0.9  # search >= 0.9x the raw batched denoiser's candidate-NFEs per second
COMPILE_TARGET = 1.25  # compiled >= 1.25x eager
CLIP_ARCH = "ViT-L-14"
ZEROSHOT_TEMPLATES = ["a photo of a {}."]


# -- models at real sizes, random weights -------------------------------------------------------


@contextmanager
def _building_on(device: str) -> Iterator[None]:
    """Initialise weights where they will run: random init of 12 B parameters on a CPU takes minutes."""
    import torch

    with torch.device(device):
        yield


def build_dit_xl(device: str, dtype: Any) -> Any:
    """DiT-XL/2 at 256 px: 28 blocks of width 1152, patch 2 over 32x32x4 latents, SD's VAE."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    with _building_on(device):
        transformer = DiTTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
        )
        vae = _sd_vae()
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    return DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).to(dtype=dtype)


def build_sd15(device: str, dtype: Any) -> Any:
    """SD 1.5 at 512 px: its UNet (860 M parameters), CLIP ViT-L/14 text encoder and VAE."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers_tiny import clip_tokenizer

    with _building_on(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD 1.x's defaults
        text = _clip_text_encoder()
        vae = _sd_vae()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(full=True),
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe.to(dtype=dtype)


def build_flux_dev(device: str, dtype: Any) -> Any:
    """The FLUX.1-dev transformer at 1024 px (12 B parameters), its 16-channel VAE, CLIP-L text
    and a one-layer T5 of the real width (4096): the prompt is encoded once per run."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from diffusers_tiny import clip_tokenizer, t5_tokenizer
    from transformers import T5Config, T5EncoderModel

    with _building_on(device):
        transformer = FluxTransformer2DModel(guidance_embeds=True).to(dtype)  # FLUX.1's defaults
        text_2 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer()), d_model=4096, d_kv=64,
                                         d_ff=10240, num_layers=1, num_heads=64,
                                         feed_forward_proj="gated-gelu"))
        text = _clip_text_encoder()
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            scaling_factor=0.3611, shift_factor=0.1159,
                            use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text, tokenizer=clip_tokenizer(full=True),
                        text_encoder_2=text_2, tokenizer_2=t5_tokenizer(), transformer=transformer)
    return pipe.to(dtype=dtype)


def _clip_text_encoder() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        max_position_embeddings=77, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407))


def _sd_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(  # SD's 8x VAE (84 M parameters)
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
    )


def _build_tiny(family: str) -> Callable[[str, Any], Any]:
    def build(device: str, dtype: Any) -> Any:
        from diffusers_tiny import build as build_tiny

        return build_tiny(family)

    return build


# -- what to run ----------------------------------------------------------------------------------


@dataclass
class Spec:
    """How to build and drive one model, and how long it may take."""

    key: str
    name: str
    adapter: str  # class name in noisesearch_builtin.models.diffusers
    preset: str  # the registered preset of the family (plans a search of a model kept in memory)
    build: Callable[[str, Any], Any]
    dtype: str
    batch: int
    candidates: int  # per timed repetition of ``hand`` and ``search``
    loop_candidates: int  # per timed repetition of ``loop``
    steps: int
    raw_calls: int  # forwards per timed repetition of ``raw``
    options: dict[str, Any]
    label: bool = False
    compile: bool = False
    save: bool = True  # through save_pretrained and the hf: adapter (else in memory)
    limit: float = 120.0  # seconds for the section (build, warm-ups, repetitions)
    compile_limit: float = 120.0
    overlap_limit: float = 60.0  # seconds for the overlap section (warm-up, interleaved pairs)
    needs: float = 60.0  # the section is skipped with less than this left


def specs(tiny: bool) -> dict[str, Spec]:
    if tiny:
        from diffusers_tiny import IMAGE_SIZE

        size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        common = dict(dtype="float32", batch=4, candidates=8, loop_candidates=2, steps=3, raw_calls=3,
                      limit=600.0, compile_limit=300.0, overlap_limit=300.0,
                      needs=0.0)  # a smoke check: all reps
        return {
            "dit": Spec("dit", "dit (tiny)", "dit.DiTModel", "dit-xl-256", _build_tiny("dit"),
                        options={"guidance_scale": 4.0}, label=True, compile=True, **common),
            "sd15": Spec("sd15", "sd15 (tiny)", "stable_diffusion.StableDiffusionModel", "sd15",
                         _build_tiny("sd"),
                         options={"guidance_scale": 7.5, **size}, compile=True, **common),
            "flux": Spec("flux", "flux-dev (tiny)", "flux.FluxModel", "flux-dev", _build_tiny("flux"),
                         options={"guidance_scale": 3.5, "max_sequence_length": 64, **size},
                         save=False, **common),
        }
    return {
        "dit": Spec("dit", "DiT-XL/2 256px", "dit.DiTModel", "dit-xl-256", build_dit_xl, "float16", batch=64,
                    candidates=256, loop_candidates=4, steps=10, raw_calls=6,
                    options={"guidance_scale": 4.0}, label=True, compile=True,
                    limit=110.0, compile_limit=100.0, overlap_limit=60.0, needs=45.0),
        "sd15": Spec("sd15", "SD1.5 UNet 512px", "stable_diffusion.StableDiffusionModel", "sd15", build_sd15,
                     "float16", batch=16, candidates=64, loop_candidates=3, steps=10, raw_calls=5,
                     options={"guidance_scale": 7.5}, compile=True,
                     limit=130.0, compile_limit=130.0, overlap_limit=75.0, needs=60.0),
        "flux": Spec("flux", "FLUX.1-dev 1024px", "flux.FluxModel", "flux-dev", build_flux_dev, "bfloat16",
                     batch=4, candidates=8, loop_candidates=2, steps=4, raw_calls=2,
                     options={"guidance_scale": 3.5}, save=False, limit=240.0, overlap_limit=150.0,
                     needs=150.0),
    }


# -- bookkeeping ----------------------------------------------------------------------------------


class Clock:
    """The script's time budget; sections ask it whether they may start or go on."""

    def __init__(self, budget: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


class Report:
    """The JSON results, rewritten whole (atomically) after every measurement."""

    def __init__(self, path: Path | None, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self.data: dict[str, Any] = {"meta": {}, "models": {}, "notes": []}

    def log(self, message: str) -> None:
        print(f"[{self.clock.elapsed():6.1f}s] {message}", flush=True)

    def note(self, message: str) -> None:
        self.data["notes"].append(message)
        self.log(f"NOTE: {message}")
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.clock.elapsed(), 2)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".part")
        partial.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(partial, self.path)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _gb(n: int) -> float:
    return round(n / 2**30, 3)


@dataclass
class Arm:
    """One timed arm: rates (candidate-NFEs per second) per repetition, and peak memory."""

    rates: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    peak_gb: float = 0.0
    resident_gb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rates": [round(r, 3) for r in self.rates],
                               "seconds": [round(s, 4) for s in self.seconds]}
        if self.rates:
            out["median"] = round(statistics.median(self.rates), 3)
        out.update(peak_gb=self.peak_gb, resident_gb=self.resident_gb, **self.extra)
        return out


def timed(arm: Arm, work: Callable[[], int]) -> float:
    """Run ``work`` (it returns the candidate-NFEs it did), record its rate and peak memory."""
    import torch

    cuda = torch.cuda.is_available()
    _sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        arm.resident_gb = _gb(torch.cuda.memory_allocated())
    begin = time.perf_counter()
    nfe = work()
    _sync()
    seconds = time.perf_counter() - begin
    if cuda:
        arm.peak_gb = max(arm.peak_gb, _gb(torch.cuda.max_memory_allocated()))
    arm.seconds.append(seconds)
    arm.rates.append(nfe / seconds)
    return seconds


def ratio(numerator: Arm, denominator: Arm, target: float | None = None) -> dict[str, Any]:
    """Per-repetition ratios (the arms were interleaved), their median and spread."""
    values = [a / b for a, b in zip(numerator.rates, denominator.rates)]
    if not values:
        return {"values": []}
    out: dict[str, Any] = {
        "values": [round(v, 3) for v in values],
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }
    if target is not None:
        out.update(target=target, met=statistics.median(values) >= target)
    return out


# -- the arms -------------------------------------------------------------------------------------


@dataclass
class Bench:
    """One model, loaded, with everything its arms share."""

    spec: Spec
    model: Any  # the adapter (a DiffusersModel)
    condition: Any
    prepared: Any
    levels: list[float]
    verifier_name: str
    verifiers: dict[str, Any]  # name -> built verifier (objective first, then the evaluator)
    verifier_options: dict[str, dict[str, Any]]
    folder: Path | None  # the save_pretrained folder, when the model went through it
    work: Path
    registries: Any
    raw_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    model_options: dict[str, Any] = field(default_factory=dict)  # over the spec's (compile=...)

    @property
    def network(self) -> Any:
        pipe = self.model.pipe
        return pipe.unet if hasattr(pipe, "unet") else pipe.transformer

    @property
    def nfe_per_candidate(self) -> int:
        return len(self.levels) - 1


def capture_inputs(bench: Bench, batch: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The exact arguments the adapter gives its network for ``batch`` candidates (CFG included)."""
    import torch

    captured: dict[str, Any] = {}

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["call"] = (args, kwargs)

    handle = bench.network.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        x = torch.randn((batch, *bench.model.latent_shape), device=bench.model.device)
        with torch.inference_mode():
            bench.model.denoise(x, bench.levels[1], bench.prepared)
    finally:
        handle.remove()
    return captured["call"]


def raw_arm(bench: Bench, network: Any, calls: int) -> Callable[[], int]:
    import torch

    args, kwargs = bench.raw_inputs  # type: ignore[misc]

    def work() -> int:
        with torch.inference_mode():
            for _ in range(calls):
                network(*args, **kwargs)
        return bench.spec.batch * calls

    return work


def hand_arm(bench: Bench, candidates: int, seed: int) -> Callable[[], int]:
    """A minimal batched loop: denoise, DDIM update, decode, verifier; best score kept."""
    import torch

    model, levels = bench.model, bench.levels
    schedule = model.schedule
    steps = [(s, schedule.scales(s), schedule.scales(t)) for s, t in zip(levels, levels[1:])]
    verifier = bench.verifiers[bench.verifier_name]

    def work() -> int:
        generator = torch.Generator(model.device).manual_seed(seed)
        best = []
        with torch.inference_mode():
            for lo in range(0, candidates, bench.spec.batch):
                rows = min(bench.spec.batch, candidates - lo)
                x = torch.randn((rows, *model.latent_shape), generator=generator, device=model.device)
                for sigma, (a, b), (a_next, b_next) in steps:
                    x0 = model.denoise(x, sigma, bench.prepared)  # (rows, C, h, w) float32
                    eps = (x - a * x0) / b
                    x = a_next * x0 + b_next * eps
                images = model.decode(x)  # (rows, 3, H, W) in [0, 1]
                best.append(verifier.score(images, bench.condition).max())
            float(torch.stack(best).max())
        return candidates * len(steps)

    return work


def search_arm(bench: Bench, candidates: int, seed: int, run: int,
               overlap: bool = False) -> Callable[[], int]:
    """``noisesearch.search`` with journal, writer, run folder and evaluator (``overlap``: with
    ``--overlap``). The result is kept as ``bench.last_search`` (``overlap``: ``last_overlap``)."""

    def work() -> int:
        result = run_search(bench, candidates, seed, bench.work / f"run-{run:03d}", reuse=True,
                            overlap=overlap)
        setattr(bench, "last_overlap" if overlap else "last_search", result)
        return int(result.usage.nfe)

    return work


def record_search(arm: Arm, result: Any) -> None:
    """What one timed search spent where (engine, model, verifiers), appended to its arm."""
    extra = arm.extra
    for key, value in (("engine_s", result.seconds), ("model_s", result.usage.model_seconds),
                       ("verifier_s", result.usage.verifier_seconds)):
        extra.setdefault(key, []).append(round(value, 4))
    extra["nfe"] = int(result.usage.nfe)  # the rate counts these: the candidates searched
    extra["uncounted_nfe"] = int(result.usage.final_nfe + result.usage.baseline_nfe)
    extra["overlap"] = bool(result.config.overlap)


def run_search(bench: Bench, candidates: int, seed: int, output: Path, reuse: bool,
               overlap: bool = False) -> Any:
    """One search through ``noisesearch``'s own planning and ``run_plan`` (journal, writer, run
    folder, evaluator). ``reuse``: the model and verifiers this bench already built (the same
    adapter object the ``hf:`` factory returns) instead of loading the folder again; a cold
    search (``reuse=False``) pays for the load, as ``noisesearch run`` does. ``overlap``: the
    run option ``--overlap`` (the next batch denoised on a thread while the last is scored)."""
    from noisesearch.api import plan, run_plan
    from noisesearch.config import RunConfig

    options: dict[str, Any] = dict(
        strategy="random", candidates=candidates, steps=bench.spec.steps, batch_size=bench.spec.batch,
        seed=seed, verifiers=[bench.verifier_name], evaluator="aesthetic",
        verifier_options=bench.verifier_options, output=str(output), device=str(bench.model.device),
        overlap=overlap,
    )
    if bench.spec.label:
        options["label"] = GOLDEN_RETRIEVER
    else:
        options["prompt"] = PROMPT
    if bench.folder is None and _search_takes_built_models():  # a model in memory only (FLUX)
        import noisesearch

        return noisesearch.search(model=bench.model, registries=bench.registries,
                                  built_verifiers=bench.verifiers, **options)
    # Else a model in memory only is planned as its preset (whose traits may need the hub).
    name = f"hf:{bench.folder}" if bench.folder is not None else bench.spec.preset
    model_options = {"dtype": bench.spec.dtype, **bench.spec.options, **bench.model_options}
    checked = plan(RunConfig(model=name, model_options=model_options, **options), bench.registries)
    assert reuse or bench.folder is not None, "a model in memory only cannot be loaded again"
    if reuse:
        build_verifier = checked.build_verifier
        checked.build_model = lambda: bench.model  # type: ignore[method-assign]
        checked.build_verifier = (  # type: ignore[method-assign]
            lambda entry: bench.verifiers.get(entry.name) or build_verifier(entry)
        )
    return run_plan(checked, write=True)


def loop_arm(bench: Bench, candidates: int, seed: int) -> Callable[[], int]:
    """Diffusers' way: one pipeline call per candidate, scored by the same verifier."""
    import torch

    model, spec = bench.model, bench.spec
    pipe = model.pipe
    kwargs: dict[str, Any] = {"num_inference_steps": spec.steps, "output_type": "pt",
                              "guidance_scale": model.guidance_scale}
    if spec.label:
        kwargs["class_labels"] = [GOLDEN_RETRIEVER]
    else:
        kwargs.update(prompt=PROMPT, height=model.height, width=model.width)
    if "max_sequence_length" in spec.options:
        kwargs["max_sequence_length"] = spec.options["max_sequence_length"]
    verifier = bench.verifiers[bench.verifier_name]
    encoders = [m for name, m in model._modules().items() if name.startswith("text_encoder")]
    for module in encoders:  # the adapter parks text encoders off the GPU between encodings
        module.to(model.device)
    vae_dtype = pipe.vae.dtype  # the adapter may run the VAE in float32 (force_upcast); the
    network_dtype = bench.network.dtype  # pipelines decode in the network's dtype: so do we here

    def work() -> int:
        for module in encoders:  # no-op unless something moved them since the setup
            module.to(model.device)
        pipe.vae.to(network_dtype)
        best = []
        for i in range(candidates):
            generator = torch.Generator("cpu").manual_seed(seed * 1000 + i)
            with torch.inference_mode():
                images = pipe(generator=generator, **kwargs).images
                if not isinstance(images, torch.Tensor):  # DiT returns numpy (1, H, W, 3)
                    images = torch.from_numpy(images).permute(0, 3, 1, 2)
                best.append(verifier.score(images.float(), bench.condition).max())
        float(torch.stack(best).max())
        pipe.vae.to(vae_dtype)
        return candidates * spec.steps

    return work


# -- one model ------------------------------------------------------------------------------------


def _adapter(spec: Spec) -> type:
    import importlib

    module, name = spec.adapter.rsplit(".", 1)
    return getattr(importlib.import_module(f"noisesearch_builtin.models.diffusers.{module}"), name)


def _adapter_options(spec: Spec) -> dict[str, Any]:
    return {k: v for k, v in spec.options.items() if k in ("height", "width", "max_sequence_length")}


def _search_takes_built_models() -> bool:
    import inspect

    import noisesearch

    return "built_verifiers" in inspect.signature(noisesearch.search).parameters


def build_verifiers(spec: Spec, tiny: bool, device: str, work: Path) -> tuple[str, dict[str, Any], dict]:
    """The objective (CLIP score, or CLIP zero-shot for labels) and the aesthetic evaluator, on one
    random-weight CLIP; their options, for the search's own planning."""
    import torch

    from noisesearch_builtin.verifiers.aesthetic import AestheticPredictor
    from noisesearch_builtin.verifiers.clip_score import ClipScore
    from noisesearch_builtin.verifiers.clip_zeroshot import ClipZeroShot

    if tiny:
        from clip_tiny import TINY_EMBED_DIM, register_tiny_clip

        arch, dim = register_tiny_clip(work / "clip-configs"), TINY_EMBED_DIM
    else:
        arch, dim = CLIP_ARCH, 768
    dtype = "float16" if device.startswith("cuda") else "float32"
    clip = {"model": arch, "pretrained": None, "device": device, "dtype": dtype}
    mlp = work / "aesthetic.pth"
    if not mlp.exists():
        from noisesearch_builtin.verifiers.aesthetic import build_mlp

        torch.manual_seed(0)
        torch.save({f"layers.{k}": v for k, v in build_mlp(dim).state_dict().items()}, mlp)
    options: dict[str, dict[str, Any]] = {"aesthetic": {"weights": str(mlp), **clip}}
    if spec.label:
        name = "clip-zeroshot"
        options[name] = {"templates": ZEROSHOT_TEMPLATES, **clip}
        objective: Any = ClipZeroShot(**options[name])
    else:
        name = "clip-score"
        options[name] = dict(clip)
        objective = ClipScore(**options[name])
    return name, {name: objective, "aesthetic": AestheticPredictor(**options["aesthetic"])}, options


def load_bench(spec: Spec, args: argparse.Namespace, report: Report, entry: dict[str, Any]) -> Bench:
    """Build the pipeline, write and load it back through the hf: adapter, prepare the condition."""
    import torch

    from noisesearch import Condition
    from noisesearch.plugins import build_registries

    device = args.device
    work = Path(tempfile.mkdtemp(prefix=f"throughput-{spec.key}-", dir=args.work))
    begin = time.perf_counter()
    torch.manual_seed(0)
    pipe = spec.build(device, getattr(torch, spec.dtype))
    entry["build_s"] = round(time.perf_counter() - begin, 2)
    report.log(f"{spec.name}: built in {entry['build_s']} s")
    folder = None
    if spec.save:
        begin = time.perf_counter()
        folder = work / "pipeline"
        pipe.save_pretrained(folder)
        del pipe
        _free()
        entry["save_s"] = round(time.perf_counter() - begin, 2)
        begin = time.perf_counter()
        from noisesearch_builtin.models.diffusers.hf import hf_pipeline

        model = hf_pipeline(str(folder), device=device, dtype=spec.dtype, **_adapter_options(spec),
                            **({"guidance_scale": spec.options["guidance_scale"]}))
        entry["load_s"] = round(time.perf_counter() - begin, 2)
        report.log(f"{spec.name}: saved in {entry['save_s']} s, loaded through hf: in {entry['load_s']} s")
    else:
        model = _adapter(spec).from_pipeline(pipe, device=device, dtype=spec.dtype, **spec.options)
        entry["note"] = "built in memory (from_pipeline), not written to disk"
    entry["weights_dtype"] = str(model.weights_dtype).replace("torch.", "")
    entry["vae_dtype"] = str(model.pipe.vae.dtype).replace("torch.", "")
    begin = time.perf_counter()
    name, verifiers, options = build_verifiers(spec, args.tiny, str(model.device), args.work)
    entry["verifiers_s"] = round(time.perf_counter() - begin, 2)
    condition = Condition(label=GOLDEN_RETRIEVER) if spec.label else Condition(prompt=PROMPT)
    prepared = model.prepare(condition)
    levels = list(model.levels(spec.steps))
    bench = Bench(spec, model, condition, prepared, levels, name, verifiers, options, folder, work,
                  build_registries())
    bench.raw_inputs = capture_inputs(bench, spec.batch)
    entry.update(batch=spec.batch, candidates=spec.candidates, loop_candidates=spec.loop_candidates,
                 steps=spec.steps, nfe_per_candidate=bench.nfe_per_candidate, verifier=name,
                 evaluator="aesthetic", device=str(model.device))
    return bench


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_main_arms(bench: Bench, args: argparse.Namespace, clock: Clock, report: Report,
                  entry: dict[str, Any]) -> None:
    """raw, hand, search, loop: one untimed warm-up each, then interleaved repetitions."""
    spec = bench.spec
    section_start = time.perf_counter()
    if bench.folder is not None:
        entry["search_model"] = (f"plan(hf:{bench.folder.name}) + run_plan, reusing the loaded model "
                                 "and verifiers (the cold search loads the folder)")
    elif _search_takes_built_models():
        entry["search_model"] = "search(model=<built model>, built_verifiers=...)"
    else:
        entry["search_model"] = f"plan({spec.preset}) + run_plan, reusing the model built in memory"
    arms: dict[str, Arm] = {"raw": Arm(), "hand": Arm(), "search": Arm(), "loop": Arm()}
    entry["arms"] = {}

    # A cold search through the public path (loads the folder again): warms up the search arm.
    if bench.folder is not None:
        begin = time.perf_counter()
        cold = run_search(bench, spec.batch, 0, bench.work / "run-cold", reuse=False)
        entry["cold_search"] = {"seconds": round(time.perf_counter() - begin, 2),
                                "usage": cold.usage.to_json()}
        report.log(f"{spec.name}: cold search (loads hf:{bench.folder.name}) in "
                   f"{entry['cold_search']['seconds']} s")
        del cold
        _free()
    warmups: dict[str, Callable[[], Callable[[], int]]] = {  # each set up just before it runs
        "raw": lambda: raw_arm(bench, bench.network, 1),
        "hand": lambda: hand_arm(bench, spec.batch, 0),
        "search": lambda: search_arm(bench, spec.batch, 0, 0),
        "loop": lambda: loop_arm(bench, 1, 0),
    }
    from noisesearch.errors import NoiseSearchError

    for name, setup in warmups.items():
        work = setup()
        begin = time.perf_counter()
        try:
            work()
        except NoiseSearchError as error:
            if name != "search" or bench.folder is not None:
                raise
            entry["search_skipped"] = f"a model in memory only could not be searched: {error}"
            report.note(f"{spec.key}: {entry['search_skipped']}")
            continue
        _sync()
        entry.setdefault("warmup_s", {})[name] = round(time.perf_counter() - begin, 2)
    report.log(f"{spec.name}: warm-ups {entry['warmup_s']}")
    report.save()

    rep_seconds = 0.0
    for rep in range(args.reps):
        spent = time.perf_counter() - section_start
        if rep > 0 and (spent + rep_seconds > spec.limit or clock.left() < rep_seconds + args.reserve):
            report.note(f"{spec.key}: stopped after {rep} repetitions (section limit {spec.limit:.0f} s, "
                        f"{clock.left():.0f} s left in the budget)")
            break
        begin = time.perf_counter()
        timed(arms["raw"], raw_arm(bench, bench.network, spec.raw_calls))
        timed(arms["hand"], hand_arm(bench, spec.candidates, rep + 1))
        if "search_skipped" not in entry:
            timed(arms["search"], search_arm(bench, spec.candidates, rep + 1, rep + 1))
            record_search(arms["search"], bench.last_search)  # type: ignore[attr-defined]
        timed(arms["loop"], loop_arm(bench, spec.loop_candidates, rep + 1))
        rep_seconds = time.perf_counter() - begin
        entry["arms"] = {name: arm.to_json() for name, arm in arms.items()}
        entry["ratios"] = {
            "search/raw": ratio(arms["search"], arms["raw"], SEARCH_TARGET),
            "hand/raw": ratio(arms["hand"], arms["raw"]),
            "search/hand": ratio(arms["search"], arms["hand"]),
            "search/loop": ratio(arms["search"], arms["loop"]),
        }
        entry["reps"] = rep + 1
        report.save()
        report.log(f"{spec.name}: rep {rep + 1} in {rep_seconds:.1f} s: "
                   + ", ".join(f"{k} {a.rates[-1]:.1f}" for k, a in arms.items() if a.rates)
                   + " cand-NFE/s")


def run_compile_arms(bench: Bench, args: argparse.Namespace, clock: Clock, report: Report,
                     entry: dict[str, Any]) -> None:
    """The raw forward eager vs under torch.compile (static shapes), interleaved."""
    import torch

    spec = bench.spec
    section_start = time.perf_counter()
    backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    entry.update(backend=backend, mode=args.compile_mode, batch=spec.batch)
    compiled = torch.compile(bench.network, backend=backend, mode=args.compile_mode, dynamic=False)
    begin = time.perf_counter()
    raw_arm(bench, compiled, 1)()  # compiles
    _sync()
    entry["compile_s"] = round(time.perf_counter() - begin, 2)
    report.log(f"{spec.name}: compiled ({backend}) in {entry['compile_s']} s")
    begin = time.perf_counter()
    raw_arm(bench, compiled, 2)()  # a second warm-up: autotuning, lazy inits
    raw_arm(bench, bench.network, 1)()
    _sync()
    entry["warmup_s"] = round(time.perf_counter() - begin, 2)
    report.save()

    def ms_per_forward(arms: dict[str, Arm]) -> dict[str, Any]:
        return {"ms_per_forward": {name: round(1000 * statistics.median(arm.seconds) / spec.raw_calls, 2)
                                   for name, arm in arms.items()}}

    interleave_pair(
        spec, args, clock, report, entry, section_start, "compile", ("compiled", "eager"), "compiled/eager",
        COMPILE_TARGET,
        lambda name, rep: raw_arm(bench, compiled if name == "compiled" else bench.network, spec.raw_calls),
        ms_per_forward, limit=spec.compile_limit, reps=args.compile_reps,
    )


def interleave_pair(
    spec: Spec, args: argparse.Namespace, clock: Clock, report: Report, entry: dict[str, Any],
    section_start: float, label: str, names: tuple[str, str], key: str, target: float | None,
    arm_for: Callable[[str, int], Callable[[], Any]],
    extra: Callable[[dict[str, Arm]], dict[str, Any]] | None = None, *, limit: float, reps: int,
) -> None:
    """Two arms (``names``: the measured one, then its reference) timed in turn for up to
    ``reps`` repetitions within the section's ``limit`` (seconds since ``section_start``) and the
    budget; ``entry`` gets their arms and their ratio (as ``key``) after every repetition (a
    cut-off run keeps what it had). The first repetition always runs: the section's ``needs``
    decided that it fits."""
    measured, reference = names
    arms = {reference: Arm(), measured: Arm()}
    rep_seconds = 0.0
    for rep in range(reps):
        spent = time.perf_counter() - section_start
        over = spent + rep_seconds > limit or clock.left() < rep_seconds + args.reserve
        if rep > 0 and over:
            report.note(f"{spec.key} {label}: stopped after {rep} repetitions")
            break
        begin = time.perf_counter()
        timed(arms[reference], arm_for(reference, rep))
        timed(arms[measured], arm_for(measured, rep))
        rep_seconds = time.perf_counter() - begin
        more = (extra or (lambda _: {}))(arms)  # first: it may add to the arms' extras
        entry["arms"] = {name: arm.to_json() for name, arm in arms.items()}
        entry["ratios"] = {key: ratio(arms[measured], arms[reference], target)}
        entry.update(more)
        entry["reps"] = rep + 1
        report.save()
    speedup = entry.get("ratios", {}).get(key, {}).get("median")
    report.log(f"{spec.name}: {key} {speedup}")


def compiled_bench(bench: Bench, mode: str, backend: str) -> Bench:
    """A second copy of ``bench``'s model, loaded from its folder with ``compile=MODE`` through the
    ``hf:`` adapter (the option's own path: network compiled in place, batches padded)."""
    import dataclasses

    from noisesearch_builtin.models.diffusers.hf import hf_pipeline

    spec, options = bench.spec, {"compile": mode, "compile_backend": backend}
    model = hf_pipeline(str(bench.folder), device=str(bench.model.device), dtype=spec.dtype,
                        **_adapter_options(spec), guidance_scale=spec.options["guidance_scale"], **options)
    return dataclasses.replace(bench, model=model, prepared=model.prepare(bench.condition),
                               model_options=options)


def run_compiled_search_arms(bench: Bench, args: argparse.Namespace, clock: Clock, report: Report,
                             entry: dict[str, Any]) -> None:
    """The search arm eager vs with ``--model-opt compile=MODE``, interleaved (the first compiled
    search compiles: timed apart as ``compile_s``). Runs after every model's raw compile section,
    so that a short budget loses these arms, not the raw-forward ratios."""
    spec = bench.spec
    section_start = time.perf_counter()
    backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    mode = args.compile_mode or "default"
    entry.update(mode=mode, backend=backend, batch=spec.batch, candidates=spec.candidates)
    begin = time.perf_counter()
    compiled = compiled_bench(bench, mode, backend)
    entry["load_s"] = round(time.perf_counter() - begin, 2)
    begin = time.perf_counter()
    search_arm(compiled, spec.batch, 0, 900)()  # compiles (one batch: the graph every batch uses)
    _sync()
    entry["compile_s"] = round(time.perf_counter() - begin, 2)
    report.log(f"{spec.name}: compiled search ({backend}, {mode}) warmed up in {entry['compile_s']} s")

    def arm(name: str, rep: int) -> Callable[[], Any]:
        if name == "search-compiled":
            return search_arm(compiled, spec.candidates, rep + 1, 2000 + rep)
        return search_arm(bench, spec.candidates, rep + 1, 1000 + rep)

    interleave_pair(spec, args, clock, report, entry, section_start, "compiled search",
                    ("search-compiled", "search-eager"), "search compiled/eager", None, arm,
                    limit=spec.compile_limit, reps=args.compile_reps)
    compiled = None  # the second copy of the model goes before the next model loads
    _free()


def run_overlap_arms(bench: Bench, args: argparse.Namespace, clock: Clock, report: Report,
                     entry: dict[str, Any]) -> None:
    """The search arm with ``overlap=True`` (``--overlap``) against the same search without it,
    interleaved, the same seed in both arms of a repetition: the ratio is what overlapping the
    next batch's denoising with the last one's decode, scoring and recording buys; ``same_best``
    checks that the two found the same best candidate (the option must not change results).
    One untimed warm-up of two batches (with one batch there is nothing to overlap). Runs last,
    so that a short budget loses it before any other ratio."""
    spec = bench.spec
    section_start = time.perf_counter()
    batches = -(-spec.candidates // spec.batch)
    entry.update(batch=spec.batch, candidates=spec.candidates, batches=batches)
    if batches < 2:
        report.note(f"{spec.key} overlap: {spec.candidates} candidates fill one batch of {spec.batch}: "
                    "nothing to overlap (--overlap computes one batch on the engine's thread)")
    begin = time.perf_counter()
    search_arm(bench, min(spec.candidates, 2 * spec.batch), 0, 2900, overlap=True)()
    _sync()
    entry["warmup_s"] = round(time.perf_counter() - begin, 2)

    def arm(name: str, rep: int) -> Callable[[], Any]:
        overlap = name == "search-overlap"
        return search_arm(bench, spec.candidates, rep + 1, (3000 if overlap else 4000) + rep, overlap)

    def recorded(arms: dict[str, Arm]) -> dict[str, Any]:
        plain, overlapped = bench.last_search, bench.last_overlap  # type: ignore[attr-defined]
        record_search(arms["search"], plain)
        record_search(arms["search-overlap"], overlapped)
        best = [(result.best.scores, result.best.recipe) for result in (plain, overlapped)]
        entry.setdefault("same_best", []).append(best[0] == best[1])
        return {}

    interleave_pair(spec, args, clock, report, entry, section_start, "overlap",
                    ("search-overlap", "search"), "search-overlap/search", None, arm, recorded,
                    limit=spec.overlap_limit, reps=args.overlap_reps)


# -- main -----------------------------------------------------------------------------------------


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    import platform

    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    from importlib import metadata

    for name in ("diffusers", "transformers", "open_clip_torch", "huggingface_hub"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    meta: dict[str, Any] = {"argv": sys.argv, "versions": versions, "device": args.device,
                            "targets": {"search/raw": SEARCH_TARGET, "compiled/eager": COMPILE_TARGET},
                            "budget_s": args.budget, "tiny": args.tiny,
                            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        meta["gpu"] = {"name": props.name, "memory_gb": _gb(props.total_memory),
                       "capability": f"{props.major}.{props.minor}"}
    return meta


def _section(report: Report, clock: Clock, entry: dict[str, Any], name: str, needs: float,
             body: Callable[[], None]) -> bool:
    """Run one section unless the budget is short; record a failure and go on."""
    if clock.left() < needs:
        entry["status"] = f"skipped: {clock.left():.0f} s left, the section needs {needs:.0f} s"
        report.note(f"{name}: {entry['status']}")
        return False
    entry["status"] = "running"
    report.save()
    begin = time.perf_counter()
    try:
        body()
    except Exception as error:  # noqa: BLE001 - one section's failure must not lose the others
        entry["status"] = f"failed: {type(error).__name__}: {error}"
        entry["traceback"] = traceback.format_exc()
        report.log(f"{name}: FAILED\n{entry['traceback']}")
        report.save()
        _free()
        return False
    entry["status"] = "done"
    entry["section_s"] = round(time.perf_counter() - begin, 1)
    report.save()
    return True


def summary(report: Report) -> str:
    lines = [f"{'model':<20} {'arm':<15} {'cand-NFE/s':>11} {'peak GB':>8}   ratios (median [min, max])"]
    for key, entry in report.data["models"].items():
        name = entry.get("name", key)
        for section in ("main", "compile", "search", "overlap"):
            compiled = entry.get("compile", {})
            part = compiled.get("search", {}) if section == "search" else entry.get(section, {})
            if not part.get("arms"):
                if part.get("status", "").startswith(("skipped", "failed")):
                    lines.append(f"{name:<20} {section:<15} {part['status'][:80]}")
                continue
            for arm, data in part["arms"].items():
                if data.get("rates"):
                    lines.append(f"{name:<20} {arm:<15} {data['median']:>11.1f} {data['peak_gb']:>8.2f}")
            for label, r in part.get("ratios", {}).items():
                if r.get("values"):
                    met = "" if "met" not in r else (" MET" if r["met"] else f" below {r['target']}")
                    spread = f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]"
                    same = part.get("same_best") if section == "overlap" else None
                    same = "" if same is None else f"  same best: {sum(same)}/{len(same)}"
                    lines.append(f"{'':<20} {label:<21} {spread}{met}{same}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ["dit", "sd15", "flux"]
    parser.add_argument("--models", nargs="+", default=["dit", "sd15"], choices=names)
    parser.add_argument("--tiny", action="store_true", help="tiny pipelines on the CPU: a smoke check")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results, rewritten as they come")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole script")
    parser.add_argument("--reserve", type=float, default=10.0, help="seconds kept free at the end")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of the main arms")
    parser.add_argument("--compile-reps", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile sections")
    parser.add_argument("--compile-backend", default=None, help="default: inductor (eager with --tiny)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--no-compile-search", dest="compile_search", action="store_false",
                        help="skip the search arm with --model-opt compile=MODE in the compile sections")
    parser.add_argument("--no-overlap", dest="overlap", action="store_false",
                        help="skip the last section: the search with --overlap against the plain search")
    parser.add_argument("--overlap-reps", type=int, default=5, help="interleaved pairs, overlap section")
    parser.add_argument("--work", type=Path, default=None, help="folder for pipelines and run folders")
    for name in ("batch", "candidates", "loop-candidates", "steps", "raw-calls"):
        parser.add_argument(f"--{name}", type=int, default=None, help="override every model's")
    parser.add_argument("--dtype", default=None, help="override every model's weights dtype")
    parser.add_argument("--size", type=int, default=None, help="override the image side (not DiT)")
    args = parser.parse_args(argv)
    clock = Clock(args.budget)
    report = Report(args.out, clock)

    import torch

    args.device = args.device or ("cpu" if args.tiny else "cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: the real sizes need a GPU; --tiny is the CPU smoke check", file=sys.stderr)
        return 2
    work_root = tempfile.TemporaryDirectory(prefix="throughput-", dir=args.work)
    args.work = Path(work_root.name)
    report.data["meta"] = _environment(args)
    report.log(f"start: {report.data['meta'].get('gpu', args.device)}, budget {args.budget:.0f} s, "
               f"models {args.models}")
    table = specs(args.tiny)
    overrides = {name: getattr(args, name) for name in
                 ("batch", "candidates", "loop_candidates", "steps", "raw_calls", "dtype")}
    for spec in table.values():
        for name, value in overrides.items():
            if value is not None:
                setattr(spec, name, value)
        if args.size and not spec.label:
            spec.options = {**spec.options, "height": args.size, "width": args.size}
    benches: dict[str, Bench] = {}
    try:
        for key in args.models:
            spec = table[key]
            entry = report.data["models"].setdefault(key, {"name": spec.name, "dtype": spec.dtype})
            main_entry = entry.setdefault("main", {})

            def main_section(spec: Spec = spec, main_entry: dict[str, Any] = main_entry) -> None:
                bench = load_bench(spec, args, report, main_entry)
                benches[spec.key] = bench
                run_main_arms(bench, args, clock, report, main_entry)

            _section(report, clock, main_entry, f"{key} main", spec.needs, main_section)
            if key == "flux" and (len(args.models) > 1 or not args.overlap):  # 24 GB: free it before
                benches.pop(key, None)  # anything else (kept for its overlap section when alone)
                _free()
            print(summary(report), flush=True)
        for key in args.models:
            spec = table[key]
            entry = report.data["models"][key]
            if not spec.compile or args.no_compile:
                continue
            if key not in benches:
                entry["compile"] = {"status": "skipped: the model did not load"}
                continue
            compile_entry = entry.setdefault("compile", {})
            needs = 0.0 if args.tiny else spec.compile_limit * 0.6
            _section(report, clock, compile_entry, f"{key} compile", needs,
                     lambda b=benches[key], e=compile_entry: run_compile_arms(b, args, clock, report, e))
            print(summary(report), flush=True)
        for key in args.models:  # last: the whole search with --model-opt compile, where time is left
            spec, bench = table[key], benches.get(key)
            if not spec.compile or args.no_compile or not args.compile_search or bench is None \
                    or bench.folder is None:
                continue
            searched = report.data["models"][key].setdefault("compile", {}).setdefault("search", {})
            needs = 0.0 if args.tiny else spec.compile_limit * 0.6  # a second model, its compile, reps
            _section(report, clock, searched, f"{key} compiled search", needs,
                     lambda b=bench, e=searched: run_compiled_search_arms(b, args, clock, report, e))
            print(summary(report), flush=True)
        for key in args.models:  # the newest arms last: --overlap's search against the plain one
            spec, entry = table[key], report.data["models"][key]
            if not args.overlap:
                continue
            overlap_entry = entry.setdefault("overlap", {})
            if "search_skipped" in entry.get("main", {}):
                overlap_entry["status"] = "skipped: the main section could not search this model"
                continue
            if key not in benches:
                freed = " (FLUX is freed after its main section unless run alone)" if key == "flux" else ""
                overlap_entry["status"] = f"skipped: the model is not loaded{freed}"
                continue
            needs = 0.0 if args.tiny else spec.overlap_limit * 0.5  # a warm-up and two pairs
            _section(report, clock, overlap_entry, f"{key} overlap", needs,
                     lambda b=benches[key], e=overlap_entry: run_overlap_arms(b, args, clock, report, e))
            print(summary(report), flush=True)
    finally:
        benches.clear()
        _free()
        report.save()
        work_root.cleanup()
    report.log("done")
    print(summary(report), flush=True)
    failed = [key for key, entry in report.data["models"].items() for part in entry.values()
              if isinstance(part, dict) and str(part.get("status", "")).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
