"""Named presets: released checkpoints with the sampler settings the paper (or the model card) uses.

A preset is its family's adapter with a hub id and defaults filled in; every option can still be
overridden (``--model-opt guidance_scale=5``, ``--model-opt path=./my-finetune``). Steps: Ma et
al. 2025 search FLUX.1-dev and PixArt-Sigma with 30 steps per candidate and DiT/SiT with 50; the
others use their pipelines' defaults, and the distilled few-step models their model cards' (no
guidance; FLUX.1-schnell 4 steps, SD-Turbo and SDXL-Turbo 1).
"""

from __future__ import annotations

from typing import ClassVar

from noisesearch_builtin.models.diffusers.dit import DiTModel
from noisesearch_builtin.models.diffusers.flux import FluxModel
from noisesearch_builtin.models.diffusers.pixart import PixArtSigmaModel
from noisesearch_builtin.models.diffusers.sd3 import StableDiffusion3Model
from noisesearch_builtin.models.diffusers.sdxl import StableDiffusionXLModel
from noisesearch_builtin.models.diffusers.stable_diffusion import StableDiffusionModel


class StableDiffusion15(StableDiffusionModel):
    """Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5): 512 px, 50 steps, CFG 7.5."""

    default_path: ClassVar[str | None] = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class StableDiffusion21(StableDiffusionModel):
    """Stable Diffusion 2.1 (stabilityai/stable-diffusion-2-1): v-prediction, 768 px, 50 steps, CFG 7.5."""

    default_path: ClassVar[str | None] = "stabilityai/stable-diffusion-2-1"


class SDTurbo(StableDiffusionModel):
    """SD-Turbo (stabilityai/sd-turbo): distilled SD 2.1, 512 px, 1 step, no guidance."""

    default_path: ClassVar[str | None] = "stabilityai/sd-turbo"
    default_steps: ClassVar[int] = 1
    default_guidance_scale: ClassVar[float] = 0.0


class StableDiffusionXLBase(StableDiffusionXLModel):
    """SD-XL 1.0 base (stabilityai/stable-diffusion-xl-base-1.0): 1024 px, 50 steps, CFG 5."""

    default_path: ClassVar[str | None] = "stabilityai/stable-diffusion-xl-base-1.0"


class SDXLTurbo(StableDiffusionXLModel):
    """SDXL-Turbo (stabilityai/sdxl-turbo): distilled SD-XL, 512 px, 1 step, no guidance."""

    default_path: ClassVar[str | None] = "stabilityai/sdxl-turbo"
    default_steps: ClassVar[int] = 1
    default_guidance_scale: ClassVar[float] = 0.0


class StableDiffusion3Medium(StableDiffusion3Model):
    """SD3 Medium (stabilityai/stable-diffusion-3-medium-diffusers): 1024 px, 28 steps, CFG 7."""

    default_path: ClassVar[str | None] = "stabilityai/stable-diffusion-3-medium-diffusers"


class Flux1Dev(FluxModel):
    """FLUX.1-dev (black-forest-labs/FLUX.1-dev): 1024 px, 30 steps (the paper's), guidance 3.5."""

    default_path: ClassVar[str | None] = "black-forest-labs/FLUX.1-dev"


class Flux1Schnell(FluxModel):
    """FLUX.1-schnell (black-forest-labs/FLUX.1-schnell): distilled, 1024 px, 4 steps, 256 T5 tokens."""

    default_path: ClassVar[str | None] = "black-forest-labs/FLUX.1-schnell"
    default_steps: ClassVar[int] = 4
    default_guidance_scale: ClassVar[float] = 0.0  # no guidance input
    default_max_sequence_length: ClassVar[int] = 256


class PixArtSigmaXL1024(PixArtSigmaModel):
    """PixArt-Sigma XL 1024 (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS): 30 steps (the paper's), CFG 4.5."""

    default_path: ClassVar[str | None] = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"


class DiTXL256(DiTModel):
    """DiT-XL/2 256 px (facebook/DiT-XL-2-256): ImageNet labels, 50 steps (the paper's), CFG 4."""

    default_path: ClassVar[str | None] = "facebook/DiT-XL-2-256"


class DiTXL512(DiTModel):
    """DiT-XL/2 512 px (facebook/DiT-XL-2-512): ImageNet labels, 50 steps, CFG 4."""

    default_path: ClassVar[str | None] = "facebook/DiT-XL-2-512"


#: Preset name (``--model NAME``) -> factory.
PRESETS: dict[str, type] = {
    "sd15": StableDiffusion15,
    "sd21": StableDiffusion21,
    "sd-turbo": SDTurbo,
    "sdxl": StableDiffusionXLBase,
    "sdxl-turbo": SDXLTurbo,
    "sd3-medium": StableDiffusion3Medium,
    "flux-dev": Flux1Dev,
    "flux-schnell": Flux1Schnell,
    "pixart-sigma": PixArtSigmaXL1024,
    "dit-xl-256": DiTXL256,
    "dit-xl-512": DiTXL512,
}
