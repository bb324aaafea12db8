"""Guidance options of the UNet pipelines: ``guidance_rescale`` and ``clip_skip`` (SD 1.x/2.x, SD-XL).

- ``guidance_rescale`` (phi): after classifier-free guidance, the guided output is rescaled to the
  per-sample standard deviation of the conditional branch and mixed back, ``phi * rescaled +
  (1 - phi) * guided`` (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
  Flawed", section 3.4). This is diffusers' ``rescale_noise_cfg``, applied where the pipelines apply
  it: to the network's guided output (epsilon or v), only when guidance runs.
- ``clip_skip``: the prompt embeddings come from that many CLIP layers before the last, passed to
  the pipeline's own ``encode_prompt(clip_skip=...)`` (as in diffusers, the negative prompt's
  embeddings keep the last layer).

Both are checked before loading; the transformer families' pipelines take neither.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from noisesearch.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: The families whose pipelines take these options (named in the refusal).
FAMILIES = "SD 1.x/2.x and SD-XL"


def check_depth(clip_skip: Any, depths: Sequence[int | None], reserved: int) -> None:
    """``clip_skip`` within the text encoders' depth: the pipeline's ``encode_prompt`` indexes the
    hidden states at ``-(clip_skip + 1 + reserved)`` (SD: 0, SD-XL: 1, its penultimate layer), and
    a skip past the first layer would fail there with a bare IndexError, after the run started.
    ``depths``: each text encoder's ``num_hidden_layers`` (None where unknown)."""
    known = [depth for depth in depths if isinstance(depth, int) and not isinstance(depth, bool)]
    if clip_skip is None or not known:
        return
    most = min(known) - reserved
    if clip_skip > most:
        raise ConfigError("clip_skip", f"this pipeline's text encoder has {min(known)} layers, so "
                          f"clip_skip can skip at most {most}; got {clip_skip}")


def check(guidance_rescale: Any, clip_skip: Any, supported: bool, family: str) -> None:
    """The values, and the options only on the families whose pipelines have them."""
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, (int, float)) \
            or not 0.0 <= float(guidance_rescale) <= 1.0:
        raise ConfigError("guidance_rescale", f"must be a number from 0 to 1, got {guidance_rescale!r}")
    bad_skip = isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 1
    if clip_skip is not None and bad_skip:
        raise ConfigError("clip_skip", f"must be a positive number of CLIP layers, got {clip_skip!r}")
    if supported:
        return
    given = {"guidance_rescale": float(guidance_rescale) > 0.0, "clip_skip": clip_skip is not None}
    for name, on in given.items():
        if on:
            raise ConfigError(name, f"only the {FAMILIES} pipelines have {name}; {family}'s does not, "
                              f"so it would change nothing: leave it out")


def rescale(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """diffusers' ``rescale_noise_cfg``: ``guided`` (B, ...) brought towards the per-sample standard
    deviation of the conditional output ``cond`` (B, ...), by the fraction ``phi``."""
    dims = list(range(1, cond.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)  # (B, 1, ...)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return phi * rescaled + (1.0 - phi) * guided


@contextmanager
def text_model_alias(encoder: Any) -> Iterator[None]:
    """Let diffusers' SD ``encode_prompt(clip_skip=...)`` run on transformers 5.

    It reaches ``text_encoder.text_model.final_layer_norm``; transformers 5's ``CLIPTextModel``
    holds its layers (``final_layer_norm`` included) on itself and has no ``text_model``. For the
    call, ``text_model`` names the encoder itself (a plain attribute: no submodule is registered).
    """
    alias = (encoder is not None and not hasattr(encoder, "text_model")
             and hasattr(encoder, "final_layer_norm"))
    if alias:
        encoder.__dict__["text_model"] = encoder
    try:
        yield
    finally:
        if alias:
            del encoder.__dict__["text_model"]
