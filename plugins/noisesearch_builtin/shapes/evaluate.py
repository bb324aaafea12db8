"""Measure the `shapes` pipeline on the held-out suite with the judge, outside the engine.

Run ``python -m noisesearch_builtin.shapes.evaluate [--pipeline DIR] [--clip DIR]
[--steps 20] [--guidance 5 ...] [--best-of 16] [--device cpu]``.

- N=1: one sample per suite prompt (DDIM, fixed noise seeds), exact match per category.
- Best-of-N: ``--best-of`` samples for each of the first ``--prompts`` compositional suite
  prompts; keep the one the CLIP scores highest (cosine of image and caption embeddings) and
  judge it; also the oracle (any of the N exact) as the ceiling.

This drives the plain diffusers pipeline directly, so it checks the shipped folder as a user
of diffusers would see it; ``noisesearch.search`` does the scaling study.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from noisesearch_builtin.shapes import CLIP_DIR, PIPELINE_DIR
from noisesearch_builtin.shapes.grammar import CATEGORIES, Prompt, load_suite
from noisesearch_builtin.shapes.judge import judge

#: Categories outside the "compositional" aggregate (the issue's 20-50% band).
SIMPLE = ("single_object", "colors")
DEFAULT_STEPS = 20
NOISE_SEED = 1_000_000


def load_pipeline(folder: Path = PIPELINE_DIR, device: str = "cpu") -> Any:
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(folder).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def sample(pipeline: Any, texts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float,
           batch: int = 256) -> np.ndarray:  # fmt: skip
    """One image per (text, seed): (N, 32, 32, 3) uint8, from N(0, I) latents drawn per seed."""
    import torch

    unet = pipeline.unet
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    out = []
    for start in range(0, len(texts), batch):
        chunk = range(start, min(start + batch, len(texts)))
        latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seeds[i]))
                               for i in chunk]).to(unet.device)  # (b, 4, 16, 16)
        images = pipeline(prompt=[texts[i] for i in chunk], latents=latents, num_inference_steps=steps,
                          guidance_scale=guidance, output_type="np").images  # (b, 32, 32, 3) in [0, 1]
        out.append(np.clip(np.rint(images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def accuracy_by_category(prompts: Sequence[Prompt], exact: Sequence[bool]) -> dict[str, float]:
    """Exact-match rate per category, plus ``compositional`` (all but SIMPLE) and ``all``."""
    result = {}
    for category in CATEGORIES:
        hits = [e for p, e in zip(prompts, exact, strict=True) if p.category == category]
        if hits:
            result[category] = float(np.mean(hits))
    comp = [e for p, e in zip(prompts, exact, strict=True) if p.category not in SIMPLE]
    result["compositional"] = float(np.mean(comp)) if comp else float("nan")
    result["all"] = float(np.mean(exact))
    return result


def n1_accuracy(pipeline: Any, prompts: Sequence[Prompt], steps: int, guidance: float,
                seed: int = 0) -> dict[str, float]:  # fmt: skip
    """One unsearched sample per prompt, judged exactly."""
    seeds = [NOISE_SEED + seed * 100_000 + i for i in range(len(prompts))]
    images = sample(pipeline, [p.text for p in prompts], seeds, steps, guidance)
    return accuracy_by_category(prompts, [judge(im, p).exact for im, p in zip(images, prompts, strict=True)])


def clip_scores(folder: Path, images: np.ndarray, texts: Sequence[str], device: str = "cpu") -> np.ndarray:
    """Cosine similarity (N,) of each image with its text under the CLIP in ``folder``."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).to(device).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), 512):
            batch = processor(text=list(texts[start : start + 512]), images=list(images[start : start + 512]),
                              return_tensors="pt", padding=True).to(device)  # fmt: skip
            image = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            text = model.get_text_features(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).pooler_output  # fmt: skip
            image = torch.nn.functional.normalize(image, dim=-1)
            text = torch.nn.functional.normalize(text, dim=-1)
            scores.append((image * text).sum(-1).cpu())
    return torch.cat(scores).numpy()


def best_of(pipeline: Any, clip_folder: Path, prompts: Sequence[Prompt], n: int, steps: int,
            guidance: float, device: str = "cpu", seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Judge exact match at N=1 and best-of-``n`` by CLIP score, and the oracle best-of-``n``."""
    texts = [p.text for p in prompts for _ in range(n)]
    seeds = [NOISE_SEED + 50_000_000 + seed * 100_000 + i for i in range(len(texts))]
    images = sample(pipeline, texts, seeds, steps, guidance)
    exact = np.array([judge(im, t).exact for im, t in zip(images, texts, strict=True)]).reshape(-1, n)
    scores = clip_scores(clip_folder, images, texts, device).reshape(-1, n)
    pick = scores.argmax(1)
    return {"n": n, "prompts": len(prompts), "n1": float(exact[:, 0].mean()),
            f"clip_best_of_{n}": float(exact[np.arange(len(exact)), pick].mean()),
            f"oracle_best_of_{n}": float(exact.any(1).mean()),
            "mean_clip_score_n1": float(scores[:, 0].mean()),
            f"mean_clip_score_best_of_{n}": float(scores.max(1).mean())}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noisesearch_builtin.shapes.evaluate",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--pipeline", type=Path, default=PIPELINE_DIR)
    parser.add_argument("--clip", type=Path, default=CLIP_DIR)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, nargs="+", default=[5.0])
    parser.add_argument("--best-of", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=30, help="compositional prompts for best-of-N")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    pipeline = load_pipeline(args.pipeline, args.device)
    suite = load_suite()
    results: dict[str, Any] = {"steps": args.steps}
    for guidance in args.guidance:
        results[f"n1_guidance_{guidance:g}"] = n1_accuracy(pipeline, suite, args.steps, guidance)
        print(json.dumps({f"guidance {guidance:g}": results[f"n1_guidance_{guidance:g}"]}), flush=True)
    if args.best_of > 1:
        rng = np.random.default_rng(0)
        pool = [p for p in suite if p.category not in SIMPLE]
        picks = rng.choice(len(pool), size=min(args.prompts, len(pool)), replace=False)
        chosen = [pool[i] for i in sorted(picks)]
        results["best_of"] = best_of(pipeline, args.clip, chosen, args.best_of, args.steps,
                                     args.guidance[0], args.device)  # fmt: skip
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
