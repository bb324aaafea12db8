"""Train the embedded `shapes` text-to-image pipeline and its CLIP verifier, in stages.

Run ``python -m noisesearch_builtin.shapes.train [--stage text|vae|unet|decoder|clip|all]
[--out DIR] [--seed 0] [--steps N] [--minutes M] [--device cpu|cuda]``.

``--out`` (default: this package) receives ``pipeline/`` (a diffusers
``StableDiffusionPipeline`` folder) and ``clip/`` (a transformers ``CLIPModel`` folder with
its tokenizer and image processor). Stages, each re-runnable on its own:

- ``vae``: an ``AutoencoderKL`` (32x32x3 <-> 16x16x4) on rendered scenes; L1 + L2
  reconstruction plus ``KL_WEIGHT`` x KL; its ``scaling_factor`` is set to 1 / std of the
  latents afterwards, as SD does. Logs the judge's exact match on originals and on
  reconstructions of held-out renders.
- ``text``: the tokenizer (CLIP's BPE restricted to the world's words, see ``networks``),
  the text encoder's seeded random initialisation and the DDIM scheduler.
- ``unet``: the UNet and the text encoder trained jointly, end to end (the encoder
  starts from the ``text`` stage's seeded initialisation). v-prediction, min-SNR-5 loss
  weighting, constant learning rate after warm-up, 10% of captions replaced by "" for
  classifier-free guidance, EMA weights saved.
- ``decoder``: the VAE's decoder fine-tuned with the encoder frozen (as SD's ft-MSE
  decoder): the latent space the UNet learned is unchanged, so it can run any time after
  ``vae``; it gives the decoder the budget the first stage could not.
- ``clip``: a separate small ``CLIPModel`` trained contrastively: symmetric InfoNCE over
  the batch, plus one hard negative caption per image (one word changed: colour, shape,
  count, size or relation flipped) on the image-to-text side, so the verifier must read
  binding, counts and relations rather than a bag of words.

Why the pipeline's text encoder is trained with the UNet rather than frozen from the CLIP
stage (as SD freezes OpenAI's CLIP): with 28 words the encoder is tiny (0.19 M parameters),
and a contrastive encoder is trained to pool a caption into one vector, which is known to be
weak on attribute binding; end-to-end training makes its per-token states carry what the
UNet's cross-attention needs. It also keeps the generator and the verifier independent, so
searching on the CLIP can show verifier hacking against the judge.

Data: ``training_pair`` scenes (held-out suite captions never appear), a fixed seeded set of
``DATASET_SIZE[stage]`` pairs per stage, drawn in chunks of ``CHUNK`` with seeds ``(seed, stage,
chunk)`` so the set does not depend on ``--workers``. No augmentation: a flip would
contradict "left of" / "right of" captions.

The recipe, its cost and the measured accuracies are in docs/shapes.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from noisesearch_builtin.shapes import PACKAGE_DIR
from noisesearch_builtin.shapes.grammar import VOCABULARY, training_pair
from noisesearch_builtin.shapes.world import COLOURS, SHAPES

#: In the order ``all`` runs them.
STAGES = ("text", "vae", "unet", "decoder", "clip")
#: Scenes drawn per stage (each stage sees about one pass, or a little more, of its set).
DATASET_SIZE = {"vae": 20_000, "unet": 100_000, "decoder": 20_000, "clip": 50_000}
CHUNK = 1000

#: Cosine schedules are this long; a stage may stop before the end (``--steps``), as the
#: shipped run did under its ``--minutes`` cap, and the schedule stays the same.
VAE_SCHEDULE = 500
VAE_STEPS = 296
VAE_BATCH = 32
VAE_LR = 2e-3
#: Weight of the KL term (summed over latent elements, averaged over the batch): just
#: enough to keep the latents bounded and smooth, as SD's VAE (1e-6).
KL_WEIGHT = 1e-6
#: Held-out renders on which the judge compares originals and reconstructions.
VAE_TEST_SCENES = 300
DECODER_SCHEDULE = 600
DECODER_STEPS = 600
#: The decoder stage runs this many times, round r with seed ``seed + r`` (fresh scenes, a
#: fresh cosine cycle): the second round took the judge on reconstructions from 0.86 to 0.97.
DECODER_ROUNDS = 2
DECODER_LR = 1e-3

UNET_STEPS = 10_000
UNET_BATCH = 32
UNET_LR = 5e-4
WARMUP_STEPS = 200
EMA_DECAY = 0.999
CFG_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0

CLIP_SCHEDULE = 2000
CLIP_STEPS = 1120
CLIP_BATCH = 128
CLIP_LR = 1e-3

Log = Callable[[str], None]


# --- data ----------------------------------------------------------------------------------


def _chunk(args: tuple[int, int, int, int]) -> tuple[np.ndarray, list[str]]:
    seed, stage, index, count = args
    rng = np.random.default_rng([seed, stage, index])
    pairs = [training_pair(rng) for _ in range(count)]
    return np.stack([image for image, _ in pairs]), [caption for _, caption in pairs]


def make_dataset(count: int, seed: int, stage: int, workers: int = 1) -> tuple[np.ndarray, list[str]]:
    """``count`` rendered (image, caption) pairs: images (N, 32, 32, 3) uint8 and captions."""
    jobs = [(seed, stage, i, min(CHUNK, count - i * CHUNK)) for i in range(math.ceil(count / CHUNK))]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_chunk, jobs)
    else:
        parts = [_chunk(job) for job in jobs]
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def to_pixels(images: np.ndarray, device: str = "cpu") -> Any:
    """uint8 (N, H, W, 3) -> float tensor (N, 3, H, W) in [-1, 1] on ``device``."""
    import torch

    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def tokenize(tokenizer: Any, captions: Sequence[str], device: str = "cpu") -> Any:
    """Token ids (N, MAX_TOKENS), padded with the end token as the pipeline pads them."""
    return tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids.to(device)


_SWAPS = {"left": "right", "right": "left", "above": "below", "below": "above",
          "small": "large", "large": "small"}  # fmt: skip
_PLURAL = {shape + "s" for shape in SHAPES}


def hard_negative(caption: str, rng: np.random.Generator) -> str:
    """The caption with one word changed so that it no longer describes the same scene."""
    words = caption.split()
    options = [i for i, w in enumerate(words)
               if w in _SWAPS or w in COLOURS or w in SHAPES or w in _PLURAL
               or w in ("two", "three", "four")]  # fmt: skip
    i = int(options[int(rng.integers(len(options)))])
    word = words[i]
    if word in _SWAPS:
        words[i] = _SWAPS[word]
    else:
        pool = (list(COLOURS) if word in COLOURS else list(SHAPES) if word in SHAPES
                else sorted(_PLURAL) if word in _PLURAL else ["two", "three", "four"])  # fmt: skip
        pool.remove(word)
        words[i] = pool[int(rng.integers(len(pool)))]
    return " ".join(words)


# --- helpers -------------------------------------------------------------------------------


class _Clock:
    """Wall and process CPU time since creation, and whether a ``--minutes`` cap is spent."""

    def __init__(self, minutes: float | None) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.limit = None if minutes is None else minutes * 60

    def spent(self) -> bool:
        return self.limit is not None and time.perf_counter() - self.wall > self.limit

    def __str__(self) -> str:
        return (f"wall {time.perf_counter() - self.wall:.0f} s, "
                f"cpu {time.process_time() - self.cpu:.0f} s")  # fmt: skip


def _lr(step: int, schedule: int, base: float, cosine: bool = True) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base`` (or constant: then the state at
    step k of a longer run is exactly a k-step run's, so checkpoints are honest runs)."""
    if step < WARMUP_STEPS:
        return base * (step + 1) / WARMUP_STEPS
    if not cosine:
        return base
    progress = (step - WARMUP_STEPS) / max(schedule - WARMUP_STEPS, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _paths(out: Path) -> tuple[Path, Path]:
    return out / "pipeline", out / "clip"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- stages --------------------------------------------------------------------------------


def train_vae(out: Path, seed: int, steps: int, minutes: float | None, device: str,
              workers: int, log: Log, scenes: int = DATASET_SIZE["vae"]) -> dict[str, float]:  # fmt: skip
    """Train the autoencoder, set its scaling factor, save ``pipeline/vae``."""
    import torch

    from noisesearch_builtin.shapes.networks import build_vae

    torch.manual_seed(seed)
    clock = _Clock(minutes)
    images, captions = make_dataset(scenes, seed, 0, workers)
    pixels = to_pixels(images, device)  # (N, 3, 32, 32)
    log(f"vae: {len(images)} scenes drawn ({clock})")
    vae = build_vae().to(device).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
    done = 0
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = _lr(step, VAE_SCHEDULE, VAE_LR)
        x = pixels[torch.randint(0, len(pixels), (VAE_BATCH,), device=device)]  # (B, 3, 32, 32)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        kl = posterior.kl().mean()
        loss = rec + KL_WEIGHT * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        done = step + 1
        if done % max(steps // 10, 1) == 0 or done == steps:
            log(f"  vae step {done}/{steps}  rec {rec.item():.4f}  kl {kl.item():.1f}  ({clock})")
        if clock.spent():
            log(f"  vae: --minutes reached after {done} steps")
            break
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 512]).latent_dist.mean
                             for i in range(0, min(4096, len(pixels)), 512)])  # fmt: skip
        scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    pipeline_dir, _ = _paths(out)
    vae.to("cpu").save_pretrained(pipeline_dir / "vae")
    metrics = {"vae_steps": done, "vae_scaling_factor": scaling, **_reconstruction(vae, seed, "vae"),
               "vae_wall_s": time.perf_counter() - clock.wall,
               "vae_cpu_s": time.process_time() - clock.cpu}  # fmt: skip
    log(f"vae: judge exact {metrics['vae_judge_exact_original']:.3f} on originals, "
        f"{metrics['vae_judge_exact_reconstruction']:.3f} on reconstructions, MAE "
        f"{metrics['vae_reconstruction_mae_0_255']:.2f}/255, scaling_factor {scaling:.4f} ({clock})")
    return metrics


def _reconstruction(vae: Any, seed: int, prefix: str) -> dict[str, float]:
    """The judge's exact match on held-out renders and on their reconstructions (latent means)."""
    import torch

    from noisesearch_builtin.shapes.judge import judge

    test, prompts = make_dataset(VAE_TEST_SCENES, seed, 10, 1)
    device = next(vae.parameters()).device
    with torch.no_grad():
        recon = vae.decode(vae.encode(to_pixels(test, device)).latent_dist.mean).sample
    recon_u8 = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return {
        f"{prefix}_judge_exact_original":
            float(np.mean([judge(im, p).exact for im, p in zip(test, prompts, strict=True)])),
        f"{prefix}_judge_exact_reconstruction":
            float(np.mean([judge(im, p).exact for im, p in zip(recon_u8, prompts, strict=True)])),
        f"{prefix}_reconstruction_mae_0_255": float(np.abs(recon_u8.astype(np.float32) - test).mean()),
    }  # fmt: skip


def train_decoder(out: Path, seed: int, steps: int, minutes: float | None, device: str, workers: int,
                  log: Log, scenes: int = DATASET_SIZE["decoder"]) -> dict[str, float]:  # fmt: skip
    """Fine-tune the VAE's decoder with the encoder frozen, as SD's ft-MSE decoder was.

    The latent space (encoder and scaling factor) stays exactly as the UNet learned it, so
    this stage may run before, during or after the ``unet`` stage.
    """
    import torch
    from diffusers import AutoencoderKL

    pipeline_dir, _ = _paths(out)
    if not (pipeline_dir / "vae").is_dir():
        raise SystemExit(f"no VAE in {pipeline_dir}: run --stage vae first")
    clock = _Clock(minutes)
    images, _ = make_dataset(scenes, seed, 3, workers)
    pixels = to_pixels(images, device)  # (N, 3, 32, 32)
    log(f"decoder: {len(images)} scenes drawn ({clock})")
    vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae").to(device)
    vae.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trained:
        p.requires_grad_(True)
    vae.train()
    optimiser = torch.optim.AdamW(trained, lr=DECODER_LR, weight_decay=0.0)
    generator = torch.Generator(device).manual_seed(seed + 5)
    done = 0
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = _lr(step, DECODER_SCHEDULE, DECODER_LR)
        x = pixels[torch.randint(0, len(pixels), (VAE_BATCH,), device=device, generator=generator)]
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, device=device,
                                                             generator=generator)  # fmt: skip
        recon = vae.decode(z).sample
        rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        rec.backward()
        optimiser.step()
        done = step + 1
        if done % max(steps // 10, 1) == 0 or done == steps:
            log(f"  decoder step {done}/{steps}  rec {rec.item():.4f}  ({clock})")
        if clock.spent():
            log(f"  decoder: --minutes reached after {done} steps")
            break
    vae.eval().requires_grad_(False)
    metrics = {"decoder_steps": done, **_reconstruction(vae, seed, "decoder"),
               "decoder_wall_s": time.perf_counter() - clock.wall,
               "decoder_cpu_s": time.process_time() - clock.cpu}  # fmt: skip
    vae.to("cpu").save_pretrained(pipeline_dir / "vae")
    log(f"decoder: judge exact {metrics['decoder_judge_exact_reconstruction']:.3f} on reconstructions, "
        f"MAE {metrics['decoder_reconstruction_mae_0_255']:.2f}/255 ({clock})")
    return metrics


def write_text(out: Path, seed: int, log: Log) -> dict[str, float]:
    """Save the tokenizer, the text encoder's seeded initialisation and the scheduler."""
    from noisesearch_builtin.shapes.networks import build_scheduler, build_tokenizer

    pipeline_dir, _ = _paths(out)
    tokenizer = build_tokenizer(VOCABULARY)
    tokenizer.save_pretrained(pipeline_dir / "tokenizer")
    _initial_text_encoder(tokenizer, seed).save_pretrained(pipeline_dir / "text_encoder")
    build_scheduler().save_pretrained(pipeline_dir / "scheduler")
    log(f"text: tokenizer of {len(tokenizer)} tokens, text encoder initialised, DDIM scheduler")
    return {"tokenizer_size": len(tokenizer)}


def _initial_text_encoder(tokenizer: Any, seed: int) -> Any:
    import torch

    from noisesearch_builtin.shapes.networks import build_text_encoder

    torch.manual_seed(seed + 1)
    return build_text_encoder(tokenizer)


def _load_tokenizer(pipeline_dir: Path) -> Any:
    from transformers import CLIPTokenizer

    if not (pipeline_dir / "tokenizer").is_dir():
        raise SystemExit(f"no tokenizer in {pipeline_dir}: run --stage text first")
    return CLIPTokenizer.from_pretrained(pipeline_dir / "tokenizer")


def _ema_update(ema: list[Any], params: list[Any], decay: float) -> None:
    import torch

    with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1.0 - decay)


def assemble(pipeline_dir: Path, unet: Any, text_encoder: Any) -> Any:
    """The ``StableDiffusionPipeline`` from the saved VAE, tokenizer and scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(pipeline_dir / "vae"),
        text_encoder=text_encoder,
        tokenizer=_load_tokenizer(pipeline_dir),
        unet=unet,
        scheduler=DDIMScheduler.from_pretrained(pipeline_dir / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _save_ema(pipeline_dir: Path, target: Path, unet: Any, text_encoder: Any,
              ema: list[Any], params: list[Any]) -> None:  # fmt: skip
    """Save the pipeline with the EMA weights swapped in (training weights restored after)."""
    import torch

    with torch.no_grad():
        backup = [p.detach().clone() for p in params]
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
        device = params[0].device
        pipeline = assemble(pipeline_dir, unet.to("cpu"), text_encoder.to("cpu"))
        pipeline.save_pretrained(target)
        unet.to(device)
        text_encoder.to(device)
        for p, b in zip(params, backup, strict=True):
            p.copy_(b)


def train_unet(out: Path, seed: int, steps: int, minutes: float | None, device: str, workers: int,
               log: Log, checkpoints: Path | None = None, every: int = 1000,
               scenes: int = DATASET_SIZE["unet"]) -> dict[str, float]:  # fmt: skip
    """Train the UNet and the text encoder jointly; save the whole pipeline (EMA weights)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler

    from noisesearch_builtin.shapes.networks import build_unet

    pipeline_dir, _ = _paths(out)
    if not (pipeline_dir / "vae").is_dir():
        raise SystemExit(f"no VAE in {pipeline_dir}: run --stage vae first")
    tokenizer = _load_tokenizer(pipeline_dir)
    clock = _Clock(minutes)
    images, captions = make_dataset(scenes, seed, 1, workers)
    pixels = to_pixels(images, device)  # (N, 3, 32, 32)
    ids = tokenize(tokenizer, captions, device)  # (N, T)
    empty = tokenize(tokenizer, [""], device)  # (1, T)
    log(f"unet: {len(images)} scenes drawn ({clock})")
    vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae").to(device).eval().requires_grad_(False)
    scaling = float(vae.config.scaling_factor)
    scheduler = DDIMScheduler.from_pretrained(pipeline_dir / "scheduler")
    alphas = scheduler.alphas_cumprod.to(device)  # (1000,)
    text_encoder = _initial_text_encoder(tokenizer, seed).to(device).train()
    torch.manual_seed(seed + 2)
    unet = build_unet().to(device).train()
    params = [p for m in (unet, text_encoder) for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    optimiser = torch.optim.AdamW(params, lr=UNET_LR, weight_decay=0.01)
    generator = torch.Generator(device).manual_seed(seed + 3)
    done, window = 0, []
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = _lr(step, steps, UNET_LR, cosine=False)
        batch = torch.randint(0, len(pixels), (UNET_BATCH,), device=device, generator=generator)
        tokens = ids[batch].clone()  # (B, T)
        drop = torch.rand(UNET_BATCH, device=device, generator=generator) < CFG_DROPOUT
        tokens[drop] = empty
        with torch.no_grad():
            mean_std = vae.encode(pixels[batch]).latent_dist
            z0 = (mean_std.mean + mean_std.std * torch.randn(mean_std.mean.shape, device=device,
                                                             generator=generator)) * scaling  # fmt: skip
        noise = torch.randn(z0.shape, device=device, generator=generator)  # (B, 4, 16, 16)
        t = torch.randint(0, len(alphas), (UNET_BATCH,), device=device, generator=generator)
        zt = scheduler.add_noise(z0, noise, t)
        target = scheduler.get_velocity(z0, noise, t)
        hidden = text_encoder(tokens).last_hidden_state  # (B, T, D)
        pred = unet(zt, t, hidden).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = snr.clamp(max=MIN_SNR_GAMMA) / (snr + 1)  # min-SNR-gamma for v-prediction
        loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        _ema_update(ema, [p.detach() for p in params], min(EMA_DECAY, (1 + step) / (10 + step)))
        done = step + 1
        window.append(loss.item())
        if done % max(steps // 20, 1) == 0 or done == steps:
            log(f"  unet step {done}/{steps}  loss {np.mean(window):.4f}  ({clock})")
            window = []
        if checkpoints is not None and done % every == 0 and done != steps:
            _save_ema(pipeline_dir, checkpoints / f"step-{done:06d}", unet, text_encoder, ema, params)
        if clock.spent():
            log(f"  unet: --minutes reached after {done} steps")
            break
    _save_ema(pipeline_dir, pipeline_dir, unet, text_encoder, ema, params)
    if checkpoints is not None:
        _save_ema(pipeline_dir, checkpoints / f"step-{done:06d}", unet, text_encoder, ema, params)
    log(f"unet: saved after {done} steps ({clock})")
    return {"unet_steps": done, "unet_wall_s": time.perf_counter() - clock.wall,
            "unet_cpu_s": time.process_time() - clock.cpu}  # fmt: skip


def train_clip(out: Path, seed: int, steps: int, minutes: float | None, device: str, workers: int,
               log: Log, scenes: int = DATASET_SIZE["clip"]) -> dict[str, float]:  # fmt: skip
    """Train the contrastive CLIP; save it with a ``CLIPProcessor`` to ``clip/``."""
    import torch
    import torch.nn.functional as F
    from transformers import CLIPProcessor

    from noisesearch_builtin.shapes.networks import build_clip, build_image_processor

    pipeline_dir, clip_dir = _paths(out)
    tokenizer = _load_tokenizer(pipeline_dir)
    clock = _Clock(minutes)
    images, captions = make_dataset(scenes, seed, 2, workers)
    pixels = to_pixels(images, device)  # (N, 3, 32, 32), = CLIPImageProcessor's [-1, 1]
    ids = tokenize(tokenizer, captions, device)  # (N, T)
    log(f"clip: {len(images)} scenes drawn ({clock})")
    torch.manual_seed(seed + 4)
    model = build_clip(tokenizer).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=CLIP_LR, weight_decay=0.1)
    rng = np.random.default_rng([seed, 4])
    labels = torch.arange(CLIP_BATCH, device=device)
    done, window, hits = 0, [], []
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = _lr(step, CLIP_SCHEDULE, CLIP_LR)
        batch = rng.integers(0, len(pixels), CLIP_BATCH)
        negatives = tokenize(tokenizer, [hard_negative(captions[i], rng) for i in batch], device)
        index = torch.from_numpy(batch).to(device)
        image = F.normalize(model.get_image_features(pixel_values=pixels[index]).pooler_output, dim=-1)
        text = F.normalize(model.get_text_features(
            input_ids=torch.cat([ids[index], negatives])).pooler_output, dim=-1)  # (2B, D)
        scale = model.logit_scale.exp().clamp(max=100)
        per_image = scale * image @ text.T  # (B, 2B): true captions, then hard negatives
        per_text = scale * text[:CLIP_BATCH] @ image.T  # (B, B)
        loss = (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        done = step + 1
        window.append(loss.item())
        beats = per_image[labels, labels] > per_image[labels, labels + CLIP_BATCH]  # (B,)
        hits.append(beats.float().mean().item())
        if done % max(steps // 10, 1) == 0 or done == steps:
            log(f"  clip step {done}/{steps}  loss {np.mean(window):.4f}  "
                f"beats hard negative {np.mean(hits):.3f}  ({clock})")  # fmt: skip
            window, hits = [], []
        if clock.spent():
            log(f"  clip: --minutes reached after {done} steps")
            break
    model.to("cpu").eval().save_pretrained(clip_dir)
    CLIPProcessor(image_processor=build_image_processor(), tokenizer=tokenizer).save_pretrained(clip_dir)
    log(f"clip: saved after {done} steps ({clock})")
    return {"clip_steps": done, "clip_wall_s": time.perf_counter() - clock.wall,
            "clip_cpu_s": time.process_time() - clock.cpu}  # fmt: skip


def run(stages: Sequence[str], out: Path, seed: int = 0, steps: int | None = None,
        minutes: float | None = None, device: str = "cpu", workers: int = 1,
        checkpoints: Path | None = None, every: int = 1000, log: Log = print,
        scenes: int | None = None, threads: int = 1) -> dict[str, float]:  # fmt: skip
    """Run ``stages`` in order into ``out``; ``steps`` / ``minutes`` override each stage's budget."""
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    out = Path(out)
    (out / "pipeline").mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    for stage in stages:
        if stage == "vae":
            metrics |= train_vae(out, seed, steps or VAE_STEPS, minutes, device, workers, log,
                                 scenes or DATASET_SIZE[stage])  # fmt: skip
        elif stage == "text":
            metrics |= write_text(out, seed, log)
        elif stage == "unet":
            metrics |= train_unet(out, seed, steps or UNET_STEPS, minutes, device, workers, log,
                                  checkpoints, every, scenes or DATASET_SIZE[stage])  # fmt: skip
        elif stage == "decoder":
            for round_ in range(DECODER_ROUNDS):
                metrics |= train_decoder(out, seed + round_, steps or DECODER_STEPS, minutes, device,
                                         workers, log, scenes or DATASET_SIZE[stage])  # fmt: skip
        elif stage == "clip":
            metrics |= train_clip(out, seed, steps or CLIP_STEPS, minutes, device, workers, log,
                                  scenes or DATASET_SIZE[stage])  # fmt: skip
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noisesearch_builtin.shapes.train",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--stage", choices=(*STAGES, "all"), default="all")
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR,
                        help="folder receiving pipeline/ and clip/ (default: the package)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the stage's step count")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap per stage")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing the scenes")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="also save the pipeline every --every UNet steps here")
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--scenes", type=int, default=None, help="override the stage's training set size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on the CPU (the shipped weights: 1 in every stage)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        print("error: --steps must be at least 1", file=sys.stderr)
        return 2
    stages = STAGES if args.stage == "all" else (args.stage,)
    metrics = run(stages, args.out, args.seed, args.steps, args.minutes, args.device, args.workers,
                  args.checkpoints, args.every, scenes=args.scenes, threads=args.threads)  # fmt: skip
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
