"""Stable Diffusion 3 (``StableDiffusion3Pipeline``): an MMDiT rectified-flow transformer
conditioned on two CLIP encoders and T5 (joint sequence) and the CLIPs' pooled projections.
Esser et al. 2024.

Reproduces the pipeline run with ``FlowMatchEulerDiscreteScheduler`` from the same latents: its
shifted sigma grid (the configuration's ``shift``, applied in ``set_timesteps`` on top of the
already-shifted range, so the last sigma is not the unshifted minimum; ``mu`` from the image size
with dynamic shifting), guidance on ``[uncond, cond]`` with "" as the default negative prompt,
timestep ``1000 sigma``, decoding of ``latents / scaling_factor + shift_factor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch_builtin.models.diffusers.base import transformer_patch
from noisesearch_builtin.models.diffusers.flow import FlowModel

if TYPE_CHECKING:
    import torch

    from noisesearch import Condition


@dataclass
class SD3PromptEmbeddings:
    """SD3's conditioning for one prompt, both guidance branches, batch dimension 1."""

    cond: torch.Tensor  # (1, 77 + T5 length, D): CLIP hidden states (padded to D) then T5's
    pooled: torch.Tensor  # (1, P): both CLIPs' pooled projections
    uncond: torch.Tensor | None
    uncond_pooled: torch.Tensor | None


class StableDiffusion3Model(FlowModel):
    """Stable Diffusion 3 pipeline (MMDiT flow transformer, two CLIPs and T5).

    :param max_sequence_length: T5 prompt length in tokens (the pipeline's default 256).
    """

    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline",)
    default_guidance_scale: ClassVar[float] = 7.0
    default_steps: ClassVar[int] = 28
    cuda_dtype: ClassVar[str] = "float16"
    img2img_family: ClassVar[bool] = True

    def __init__(
        self,
        max_sequence_length: int = 256,
        **options: Any,
    ) -> None:
        self.max_sequence_length = int(max_sequence_length)
        super().__init__(**options)  # the options every diffusers model takes

    @classmethod
    def _patch_multiple(cls, path: str) -> int:
        return transformer_patch(path)

    def _setup(self, height: int | None, width: int | None) -> None:
        self._setup_schedule()
        transformer = self.pipe.transformer
        factor = self.pipe.vae_scale_factor
        self.patch = transformer.config.patch_size
        default = self.pipe.default_sample_size * factor
        self.height, self.width = self._resolution(height, width, default, factor * self.patch)
        self.latent_shape = (transformer.config.in_channels, self.height // factor, self.width // factor)

    def levels(self, steps: int) -> list[float]:
        """The pipeline's grid: ``set_timesteps(steps)`` (with ``mu`` under dynamic shifting)."""
        _, h, w = self.latent_shape
        mu = self._dynamic_shift((h // self.patch) * (w // self.patch), max_shift_default=1.16)
        extra = {} if mu is None else {"mu": mu}
        return self._from_start(self._flow_levels(steps, num_inference_steps=steps, **extra), steps)

    def _native_timesteps(self, steps: int) -> dict[str, Any]:
        """As ``StableDiffusion3Pipeline``: ``num_inference_steps``, and ``mu`` with dynamic shifting."""
        _, h, w = self.latent_shape
        mu = self._dynamic_shift((h // self.patch) * (w // self.patch), max_shift_default=1.16)
        return {"num_inference_steps": steps, "device": self.device, **({} if mu is None else {"mu": mu})}

    def _encode(self, condition: Condition) -> SD3PromptEmbeddings:
        cond, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
            prompt=condition.prompt,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=self._guided(),
            negative_prompt=condition.negative_prompt,
            max_sequence_length=self.max_sequence_length,
        )
        guided = self._guided()
        return SD3PromptEmbeddings(
            cond=cond,
            pooled=pooled,
            uncond=uncond if guided else None,
            uncond_pooled=uncond_pooled if guided else None,
        )

    def denoise(self, x: torch.Tensor, sigma: float, prepared: SD3PromptEmbeddings) -> torch.Tensor:
        import torch

        batch = x.shape[0]  # x: (B, C, h, w), float32
        sample = x.to(self.device, self.weights_dtype)
        context = self._batched(prepared.cond, prepared.uncond, batch)  # (B or 2B, L, D)
        pooled = self._batched(prepared.pooled, prepared.uncond_pooled, batch)  # (B or 2B, P)
        if self._guided():
            sample = torch.cat([sample, sample])
        # The scheduler's float32 timestep 1000 sigma (exact: sigma is a float32 value).
        timestep = torch.full((sample.shape[0],), sigma * 1000.0, dtype=torch.float32, device=self.device)
        velocity = self.pipe.transformer(
            hidden_states=sample,
            timestep=timestep,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return self._x0(x, self._guide(velocity).to(x.device, x.dtype), sigma)

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        return latents / config.scaling_factor + config.shift_factor

    def _activation_size(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        config = self.pipe.transformer.config
        tokens = (h // self.patch) * (w // self.patch) + 77 + self.max_sequence_length
        return tokens, config.num_attention_heads * config.attention_head_dim
