"""Measure the cost of a backward pass through the denoiser, relative to its forward pass.

The ``gradient`` strategy charges every backward pass through a denoiser call a fixed multiple of
NFEs (``noisesearch.gradients.BACKWARD_NFE_FACTOR``). This script measures that multiple once on
the embedded models: for one checkpointed denoiser call (``torch.utils.checkpoint``, as the
strategy runs it), the time of the backward pass (recomputation included) over the time of the
forward pass with autograd on. Median of ``--repeats`` after one warm-up.

    nice -n 10 python benchmarks/backward_cost.py --threads 1

Prints one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from noisesearch import Condition
from noisesearch.plugins import build_registries


def ratio(model: Any, prepared: Any, batch: int, sigma: float, repeats: int) -> dict[str, float]:
    forwards, backwards = [], []
    shape = (batch, *model.latent_shape)
    for i in range(repeats + 1):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(i)).requires_grad_(True)
        start = time.perf_counter()
        out = checkpoint(model.denoise, x, sigma, prepared, use_reentrant=False)
        middle = time.perf_counter()
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        end = time.perf_counter()
        if i:  # the first is a warm-up
            forwards.append(middle - start)
            backwards.append(end - middle)
    forward, backward = statistics.median(forwards), statistics.median(backwards)
    return {"forward_ms": round(1e3 * forward, 3), "backward_ms": round(1e3 * backward, 3),
            "ratio": round(backward / forward, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registries = build_registries()
    digits = registries.models.get("digits").create()
    print(json.dumps({"model": "digits", "batch": 16,
                      **ratio(digits, digits.prepare(Condition(label=3)), 16, 0.5, args.repeats)}))
    shapes = registries.models.get("shapes").create(device="cpu")
    prepared = shapes.prepare(Condition(prompt="a red circle"))
    print(json.dumps({"model": "shapes", "batch": 4,
                      **ratio(shapes, prepared, 4, 0.5, args.repeats)}))


if __name__ == "__main__":
    main()
