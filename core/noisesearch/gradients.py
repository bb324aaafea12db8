"""Differentiable evaluation: the objective of initial noises and its gradient, through the solve,
the decoder and differentiable verifiers (for gradient strategies such as ``gradient``).

Everything else in the engine runs without autograd (``no_grad``, ``inference_mode``) and
scores are Python floats; here autograd is on, from the noise to a weighted sum of verifier
scores. Memory is kept to one denoiser call at a time: every denoiser call and the decoder run under
``torch.utils.checkpoint`` (non-reentrant), so their activations are recomputed during the
backward pass instead of being held for every step.

Cost: a forward pass counts one NFE per denoiser call, as everywhere; a backward pass through
the denoiser counts :data:`BACKWARD_NFE_FACTOR` NFEs per denoiser call (the checkpointed
recomputation included). The factor is a fixed constant, measured once (below), never per run.

Measured once (``nice -n 10 python benchmarks/backward_cost.py --threads 1 --repeats 11``, a
shared 2-core CPU, median of 11): backward / forward time of one checkpointed denoiser call (the
decoder and verifiers excluded) was 1.70 on the digits flow network (batch 16) and 1.95 on the
shapes UNet (batch 4); a second run gave 1.74 and 1.94. ``BACKWARD_NFE_FACTOR = 2`` rounds them up,
and is the usual figure on GPUs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from noisesearch.errors import IncompatibleError
from noisesearch.faults import Owner, blame, is_out_of_memory
from noisesearch.sampling import Solver, solve
from noisesearch.types import check_scores

if TYPE_CHECKING:
    import torch

    from noisesearch.scoring import Scorer
    from noisesearch.types import Condition

#: NFEs charged per denoiser call that a backward pass goes through (see the module docstring).
BACKWARD_NFE_FACTOR = 2


@dataclass
class Gradients:
    """What one differentiable evaluation of a batch of noises gives back (detached)."""

    objective: torch.Tensor  # (N,) the weighted sum of verifier scores, float32, CPU
    scores: dict[str, list[float]]  # each weighted verifier's raw scores
    grad: torch.Tensor  # (N, *latent_shape) d objective / d noise, on the noises' device


def differentiable(verifier: Any) -> bool:
    """Whether a verifier (or its factory) declares a score differentiable in the image."""
    return bool(getattr(verifier, "differentiable", False)) and callable(
        getattr(verifier, "score_with_grad", None)
    )


def check_weights(scorer: Scorer, weights: Mapping[str, float]) -> None:
    """Every weighted verifier is one of the run's and differentiable (a plan checks this
    before loading; this is the engine's own guard)."""
    if not weights:
        raise ValueError("a differentiable objective needs at least one weighted verifier")
    for name in weights:
        verifier = scorer.verifiers.get(name)
        if verifier is None:
            raise IncompatibleError(f"verifier {name!r} is not one of this run's verifiers "
                                    f"({', '.join(scorer.verifiers)})")
        if not differentiable(verifier):
            raise IncompatibleError(f"verifier {name!r} is not differentiable (no "
                                    f"`differentiable = True` with `score_with_grad`)")


def value_and_grad(
    noises: torch.Tensor,
    model: Any,
    prepared: Any,
    levels: Sequence[float],
    solver: str | Solver,
    score: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, list[float]]]],
    model_owner: Owner,
    initial: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[Gradients, float]:
    """Solve ``noises`` ``(N, *latent)`` over ``levels``, decode, score with ``score`` (images ->
    the objective ``(N,)`` with its graph, and the raw scores) and differentiate the objective's
    sum with respect to the noises (rows are independent, so each row's gradient is its own).
    ``initial`` makes the state at ``levels[0]`` from the noises, differentiably (img2img: the
    image's latents noised by them; ``Engine.initial_state``).

    Returns the gradients and the seconds spent in the model (denoiser and decoder, both passes).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        with blame(model_owner, keep=is_out_of_memory):
            return checkpoint(model.denoise, x, sigma, prepared, use_reentrant=False)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        with blame(model_owner, keep=is_out_of_memory):
            return checkpoint(model.decode, latents, use_reentrant=False)

    start = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        x = noises.detach().clone().requires_grad_(True)  # a leaf of its own, (N, *latent)
        state = x if initial is None else initial(x)  # (N, *latent) at levels[0]
        latents = solve(denoise, state, model.schedule, levels, solver).x
        images = decode(latents).float().clamp(0, 1)  # (N, 3, H, W), as Engine._decode
        model_seconds = time.perf_counter() - start
        objective, scores = score(images)
        start = time.perf_counter()
        (grad,) = torch.autograd.grad(objective.sum(), x)
        model_seconds += time.perf_counter() - start
    result = Gradients(objective.detach().float().cpu(), scores, grad.detach())
    return result, model_seconds


def weighted_objective(
    scorer: Scorer, weights: Mapping[str, float], condition: Condition
) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, list[float]]]]:
    """``images -> (sum_i w_i s_i(images) (N,) with its graph, {name: raw scores})``, over the
    weighted verifiers' ``score_with_grad``."""

    def score(images: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[float]]]:
        total = None
        scores: dict[str, list[float]] = {}
        for name, weight in weights.items():
            verifier = scorer.verifiers[name]
            with blame(scorer.owners.get(name) or Owner.of("verifier", verifier, name)):
                values = verifier.score_with_grad(images, condition)
            check_scores(f"{name} (score_with_grad)", values, images)
            values = values.float().to(images.device)
            scores[name] = values.detach().cpu().tolist()
            total = weight * values if total is None else total + weight * values
        assert total is not None
        return total, scores

    return score
