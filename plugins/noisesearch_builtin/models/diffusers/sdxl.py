"""Stable Diffusion XL (``StableDiffusionXLPipeline``): a UNet conditioned on two CLIP text
encoders' hidden states (concatenated), the second encoder's pooled projection and six
"added time ids". Podell et al. 2023.

Reproduces the pipeline run with ``DDIMScheduler`` (eta 0) from the same latents. Conventions
followed: time ids ``(H, W, 0, 0, H, W)`` (original size, crop top-left, target size);
unconditional embeddings are zeros when no negative prompt is given and the pipeline's
``force_zeros_for_empty_prompt`` is set (as released), else the encoded negative prompt;
decoding applies the VAE's ``latents_mean``/``latents_std`` when it has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from noisesearch_builtin.models.diffusers.base import VariancePreservingModel

if TYPE_CHECKING:
    import torch

    from noisesearch import Condition


@dataclass
class XLPromptEmbeddings:
    """SD-XL's conditioning for one prompt, both guidance branches, batch dimension 1."""

    cond: torch.Tensor  # (1, L, D1 + D2) both encoders' penultimate hidden states
    pooled: torch.Tensor  # (1, P) the second encoder's pooled projection
    uncond: torch.Tensor | None  # (1, L, D1 + D2); None without guidance
    uncond_pooled: torch.Tensor | None  # (1, P)
    time_ids: torch.Tensor  # (1, 6): H, W, 0, 0, H, W


class StableDiffusionXLModel(VariancePreservingModel):
    """Stable Diffusion XL pipeline (UNet with pooled text embeddings and size/crop time ids)."""

    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline",)
    attention_slicing_family: ClassVar[bool] = True
    guidance_options_family: ClassVar[bool] = True
    clip_skip_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    clip_skip_reserved: ClassVar[int] = 1  # SD-XL's embeddings are the penultimate layer's
    img2img_family: ClassVar[bool] = True
    default_guidance_scale: ClassVar[float] = 5.0
    default_steps: ClassVar[int] = 50

    def _setup(self, height: int | None, width: int | None) -> None:
        self._setup_schedule()
        factor = self.pipe.vae_scale_factor
        default = self.pipe.default_sample_size * factor
        self.height, self.width = self._resolution(height, width, default, factor)
        self.latent_shape = (self.pipe.unet.config.in_channels, self.height // factor, self.width // factor)

    def _encode(self, condition: Condition) -> XLPromptEmbeddings:
        import torch

        cond, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
            prompt=condition.prompt,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=self._guided(),
            negative_prompt=condition.negative_prompt,
            clip_skip=self.clip_skip,
        )
        size = (self.height, self.width)
        time_ids = torch.tensor([[*size, 0, 0, *size]], dtype=cond.dtype, device=self.device)
        guided = self._guided()
        return XLPromptEmbeddings(
            cond=cond,
            pooled=pooled,
            uncond=uncond if guided else None,
            uncond_pooled=uncond_pooled if guided else None,
            time_ids=time_ids,
        )

    def denoise(self, x: torch.Tensor, sigma: float, prepared: XLPromptEmbeddings) -> torch.Tensor:
        import torch

        batch = x.shape[0]  # x: (B, C, h, w), float32
        sample = x.to(self.device, self.weights_dtype)
        context = self._batched(prepared.cond, prepared.uncond, batch)  # (B or 2B, L, D)
        pooled = self._batched(prepared.pooled, prepared.uncond_pooled, batch)  # (B or 2B, P)
        if self._guided():
            sample = torch.cat([sample, sample])
        time_ids = prepared.time_ids.expand(sample.shape[0], -1)  # (B or 2B, 6)
        timestep = torch.tensor(self._timestep(sigma), device=self.device)
        output = self.pipe.unet(
            sample,
            timestep,
            encoder_hidden_states=context,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            return_dict=False,
        )[0]
        return self._x0(x, self._guide(output).to(x.device, x.dtype), sigma)

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        import torch

        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            channels = latents.shape[1]
            mean_t = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            return latents * std_t / config.scaling_factor + mean_t
        return latents / config.scaling_factor

    def _image_latents(self, encoded: torch.Tensor) -> torch.Tensor:
        """As the SD-XL img2img pipeline: ``(z - mean) * scaling_factor / std`` where the VAE has
        ``latents_mean``/``latents_std``, else ``scaling_factor * z``."""
        import torch

        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return encoded * config.scaling_factor
        channels = encoded.shape[1]
        mean_t = torch.tensor(mean).view(1, channels, 1, 1).to(encoded.device, encoded.dtype)
        std_t = torch.tensor(std).view(1, channels, 1, 1).to(encoded.device, encoded.dtype)
        return (encoded - mean_t) * config.scaling_factor / std_t

    def _activation_size(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        return h * w, self.pipe.unet.config.block_out_channels[0]
