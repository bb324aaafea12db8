"""Throughput of the diffusers adapters: batched search against diffusers' per-candidate loop.

For each model, three numbers in candidate-NFEs per second (one NFE = one denoiser evaluation of
one candidate; a classifier-free-guidance step is one NFE, its two branches run in one forward):

- ``denoiser``: the adapter's batched forward alone (``model.denoise`` on B candidates), the
  ceiling for a search;
- ``search``: a random search through the engine (``noisesearch`` strategy ``random``): solver,
  VAE decoding and a trivial verifier included;
- ``pipeline-loop``: what one gets without noisesearch, one ``pipeline(...)`` call per candidate
  with its own latents (same steps, same guidance, decoding included).

Models are built in memory with random weights at the real denoisers' sizes (no download):
DiT-XL/2 at 256 px (fp16), the SD 1.5 UNet at 512 px (fp16) with the CLIP ViT-L text encoder, and
the FLUX.1-dev transformer at 1024 px (bf16). FLUX's T5 encoder is cut to one layer of the real
width (the prompt is encoded once per run, so its depth does not change throughput). Run on a GPU:

    python benchmarks/diffusers_throughput.py                 # all three, default batch sizes
    python benchmarks/diffusers_throughput.py --models dit --batch 64 --candidates 128
    python benchmarks/diffusers_throughput.py --tiny           # CPU smoke check on tiny pipelines

``--tiny`` runs the same code on the tests' tiny pipelines (``tests/diffusers_tiny.py``); its
numbers say nothing about GPUs. Results print as a table and as JSON lines (``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tokenizers and tiny pipelines shared with the tests

PROMPT = "a photograph of a red apple on a wooden table"
GOLDEN_RETRIEVER = 207


@dataclass
class Result:
    model: str
    device: str
    dtype: str
    batch: int
    candidates: int
    steps: int
    denoiser_nfe_per_s: float
    search_nfe_per_s: float
    pipeline_loop_nfe_per_s: float

    @property
    def speedup(self) -> float:
        return self.search_nfe_per_s / self.pipeline_loop_nfe_per_s


# -- models at real sizes, random weights ---------------------------------------------------------


def build_dit_xl(dtype: Any) -> Any:
    """DiT-XL/2 at 256 px: 28 blocks of width 1152, patch 2 over 32x32x4 latents, SD's VAE."""
    import torch
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = DiTTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
    )
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    pipe = DiTPipeline(transformer=transformer, vae=_sd_vae(), scheduler=scheduler)
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe


def build_sd15(dtype: Any) -> Any:
    """SD 1.5 at 512 px: its UNet (860 M parameters), CLIP ViT-L/14 text encoder and VAE."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers_tiny import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the defaults are SD 1.x's
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        max_position_embeddings=77, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=_sd_vae(), text_encoder=text, tokenizer=clip_tokenizer(full=True),
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe


def build_flux_dev(dtype: Any) -> Any:
    """The FLUX.1-dev transformer at 1024 px (12 B parameters, built on the GPU in ``dtype``), its
    16-channel VAE, CLIP-L text and a one-layer T5 of the real width (4096)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from diffusers_tiny import clip_tokenizer, t5_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # 24 GB of bf16 weights: initialise them where they will run
            transformer = FluxTransformer2DModel(guidance_embeds=True)  # the defaults are FLUX.1's
            text_2 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer()), d_model=4096, d_kv=64,
                                             d_ff=10240, num_layers=1, num_heads=64,
                                             feed_forward_proj="gated-gelu"))
            text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                num_hidden_layers=12, num_attention_heads=12,
                                                max_position_embeddings=77, bos_token_id=49406,
                                                eos_token_id=49407, pad_token_id=49407))
            vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                down_block_types=("DownEncoderBlock2D",) * 4,
                                up_block_types=("UpDecoderBlock2D",) * 4,
                                block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                scaling_factor=0.3611, shift_factor=0.1159,
                                use_quant_conv=False, use_post_quant_conv=False)
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text, tokenizer=clip_tokenizer(full=True),
                        text_encoder_2=text_2, tokenizer_2=t5_tokenizer(), transformer=transformer)


def _sd_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(  # SD's 8x VAE (84 M parameters)
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
    )


# -- one model -------------------------------------------------------------------------------------


@dataclass
class Spec:
    """How to build and drive one model."""

    name: str
    adapter: str  # class name in noisesearch_builtin.models.diffusers
    build: Callable[[Any], Any]
    dtype: str
    batch: int
    options: dict[str, Any]
    label: bool = False


def specs(tiny: bool) -> dict[str, Spec]:
    if tiny:
        from diffusers_tiny import IMAGE_SIZE, build

        size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        return {
            "dit": Spec("dit (tiny)", "dit.DiTModel", lambda _: build("dit"), "float32", 4,
                        {"guidance_scale": 4.0}, label=True),
            "sd15": Spec("sd15 (tiny)", "stable_diffusion.StableDiffusionModel", lambda _: build("sd"),
                         "float32", 4, {"guidance_scale": 7.5, **size}),
            "flux": Spec("flux-dev (tiny)", "flux.FluxModel", lambda _: build("flux"), "float32", 2,
                         {"guidance_scale": 3.5, "max_sequence_length": 64, **size}),
        }
    return {
        "dit": Spec("DiT-XL/2 256px", "dit.DiTModel", build_dit_xl, "float16", 64,
                    {"guidance_scale": 4.0}, label=True),
        "sd15": Spec("SD1.5 UNet 512px", "stable_diffusion.StableDiffusionModel", build_sd15, "float16", 16,
                     {"guidance_scale": 7.5}),
        "flux": Spec("FLUX.1-dev 1024px", "flux.FluxModel", build_flux_dev, "bfloat16", 4,
                     {"guidance_scale": 3.5}),
    }


def _adapter(spec: Spec) -> type:
    import importlib

    module, name = spec.adapter.rsplit(".", 1)
    return getattr(importlib.import_module(f"noisesearch_builtin.models.diffusers.{module}"), name)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(spec: Spec, device: str, candidates: int, steps: int, batch: int | None, repeats: int) -> Result:
    """The three throughputs of one model (after one warm-up of each)."""
    import torch

    from noisesearch import Condition
    from noisesearch.engine import Budget, Engine, Scorer
    from noisesearch.testing import BrightnessVerifier
    from noisesearch_builtin.search.random_search import RandomSearch

    dtype = getattr(torch, spec.dtype)
    pipe = spec.build(dtype)
    model = _adapter(spec).from_pipeline(pipe, device=device, dtype=spec.dtype, **spec.options)
    batch = batch or spec.batch
    condition = Condition(label=GOLDEN_RETRIEVER) if spec.label else Condition(prompt=PROMPT)
    prepared = model.prepare(condition)
    levels = model.levels(steps)

    # 1. the batched denoiser alone
    x = torch.randn((batch, *model.latent_shape), device=model.device)
    with torch.inference_mode():
        model.denoise(x, levels[1], prepared)
        _sync()
        start = time.perf_counter()
        for _ in range(repeats):
            model.denoise(x, levels[1], prepared)
        _sync()
    denoiser = batch * repeats / (time.perf_counter() - start)

    # 2. random search through the engine (solver, VAE decode, verifier)
    def search(n: int) -> float:
        engine = Engine(model, condition, Scorer({"brightness": BrightnessVerifier()}), Budget(candidates=n),
                        levels, batch_size=batch, seed=0, top_k=1)
        _sync()
        begin = time.perf_counter()
        engine.run(RandomSearch())
        _sync()
        return engine.usage.nfe / (time.perf_counter() - begin)

    search(batch)  # warm-up
    searched = search(candidates)

    # 3. diffusers' way: one pipeline call per candidate, its own latents
    def pipeline_loop(n: int) -> float:
        kwargs: dict[str, Any] = {"num_inference_steps": steps, "output_type": "pt",
                                  "guidance_scale": model.guidance_scale}
        if spec.label:
            kwargs["class_labels"] = [GOLDEN_RETRIEVER]
        else:
            kwargs.update(prompt=PROMPT, height=model.height, width=model.width)
        if "max_sequence_length" in spec.options:
            kwargs["max_sequence_length"] = spec.options["max_sequence_length"]
        _sync()
        begin = time.perf_counter()
        for i in range(n):
            generator = torch.Generator("cpu").manual_seed(i)
            with torch.inference_mode():
                pipe(generator=generator, **kwargs)
        _sync()
        return n * (len(levels) - 1) / (time.perf_counter() - begin)

    if not spec.label:  # the text pipelines' encoders must be on the device for their own calls
        for name, module in model._modules().items():
            if name.startswith("text_encoder"):
                module.to(model.device)
    pipeline_loop(1)  # warm-up
    loop = pipeline_loop(min(candidates, max(2, candidates // 4)))
    device_name = str(model.device)
    return Result(spec.name, device_name, spec.dtype, batch, candidates, steps, denoiser, searched, loop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ["dit", "sd15", "flux"]
    parser.add_argument("--models", nargs="+", default=names, choices=names)
    parser.add_argument("--tiny", action="store_true", help="tiny pipelines on any device: a smoke check")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--candidates", type=int, default=None, help="search candidates (default 4x batch)")
    parser.add_argument("--steps", type=int, default=None, help="solver steps (default 4 tiny, 10 otherwise)")
    parser.add_argument("--batch", type=int, default=None, help="candidates per batch (default per model)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the denoiser forward")
    parser.add_argument("--json", type=Path, default=None, help="append results as JSON lines")
    args = parser.parse_args(argv)

    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: the real sizes need a GPU; --tiny is the CPU smoke check", file=sys.stderr)
        return 2
    steps = args.steps or (4 if args.tiny else 10)
    table = specs(args.tiny)
    header = ("model", "device", "batch", "denoiser", "search", "loop", "speedup")
    print("{:<20} {:<7} {:>5} {:>10} {:>10} {:>10} {:>8}".format(*header))
    for key in args.models:
        spec = table[key]
        candidates = args.candidates or 4 * (args.batch or spec.batch)
        result = measure(spec, args.device, candidates, steps, args.batch, args.repeats)
        print(f"{result.model:<20} {result.device:<7} {result.batch:>5} {result.denoiser_nfe_per_s:>10.1f} "
              f"{result.search_nfe_per_s:>10.1f} {result.pipeline_loop_nfe_per_s:>10.1f} "
              f"{result.speedup:>7.2f}x")
        if args.json:
            with args.json.open("a") as handle:
                handle.write(json.dumps({**asdict(result), "speedup": result.speedup}) + "\n")
        del result
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print("(candidate-NFEs per second; speedup = search / pipeline-loop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
