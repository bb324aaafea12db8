"""Stable Diffusion 1.x and 2.x (``StableDiffusionPipeline``): a UNet over 4-channel latents
conditioned on CLIP text hidden states, epsilon-prediction (SD 1.x, SD 2.x-base, SD-Turbo) or
v-prediction (SD 2.x 768). Rombach et al. 2022.

Reproduces ``StableDiffusionPipeline`` run with ``DDIMScheduler`` (eta 0) from the same latents:
prompt embeddings from the pipeline's ``encode_prompt`` ("" as the negative prompt when none is
given), guidance on ``[uncond, cond]``, decoding of ``latents / scaling_factor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch_builtin.models.diffusers import guidance, index
from noisesearch_builtin.models.diffusers.base import VariancePreservingModel

if TYPE_CHECKING:
    import torch

    from noisesearch import Condition


@dataclass
class PromptEmbeddings:
    """One prompt's text conditioning, both guidance branches, batch dimension 1."""

    cond: torch.Tensor  # (1, L, D) CLIP hidden states of the prompt
    uncond: torch.Tensor | None  # (1, L, D) of the negative prompt; None without guidance


class StableDiffusionModel(VariancePreservingModel):
    """Stable Diffusion 1.x/2.x pipeline (epsilon or v-prediction UNet, CLIP text encoder)."""

    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    attention_slicing_family: ClassVar[bool] = True
    guidance_options_family: ClassVar[bool] = True
    img2img_family: ClassVar[bool] = True
    default_guidance_scale: ClassVar[float] = 7.5
    default_steps: ClassVar[int] = 50

    def _load_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False}

    def _setup(self, height: int | None, width: int | None) -> None:
        import torch

        unet = self.pipe.unet
        self._setup_schedule()
        factor = self.pipe.vae_scale_factor
        sample = unet.config.sample_size
        sample = sample if isinstance(sample, int) else sample[0]
        self.height, self.width = self._resolution(height, width, sample * factor, factor)
        self.latent_shape = (unet.config.in_channels, self.height // factor, self.width // factor)
        # Guidance-distilled UNets (LCM) take the scale as an embedding instead of a second branch.
        self.embedded_guidance = unet.config.time_cond_proj_dim is not None
        self.timestep_cond = None
        if self.embedded_guidance:
            w = torch.tensor([self.guidance_scale - 1.0])
            embedding = self.pipe.get_guidance_scale_embedding(w, unet.config.time_cond_proj_dim)
            self.timestep_cond = embedding.to(self.device, self.weights_dtype)  # (1, time_cond_proj_dim)

    def _guided(self) -> bool:
        return self.guidance_scale > 1.0 and not self.embedded_guidance

    @classmethod
    def _check_negative_prompt_of(cls, path: str, options: dict[str, Any], negative: str | None) -> None:
        if negative is not None:  # a guidance-distilled UNet (LCM) says so in its configuration
            unet = index.read_json(path, "unet/config.json", required=False) or {}
            scale = options.get("guidance_scale")
            cls._check_guided(negative, float(cls.default_guidance_scale if scale is None else scale),
                              embedded=unet.get("time_cond_proj_dim") is not None)

    def check_negative_prompt(self, negative: str | None) -> None:
        self._check_guided(negative, self.guidance_scale, embedded=self.embedded_guidance)

    def _encode(self, condition: Condition) -> PromptEmbeddings:
        with guidance.text_model_alias(self.pipe.text_encoder):
            cond, uncond = self.pipe.encode_prompt(
                condition.prompt,
                self.device,
                1,
                self._guided(),
                negative_prompt=condition.negative_prompt,
                clip_skip=self.clip_skip,
            )
        return PromptEmbeddings(cond=cond, uncond=uncond if self._guided() else None)

    def denoise(self, x: torch.Tensor, sigma: float, prepared: PromptEmbeddings) -> torch.Tensor:
        import torch

        batch = x.shape[0]  # x: (B, C, h, w), float32
        sample = x.to(self.device, self.weights_dtype)
        context = self._batched(prepared.cond, prepared.uncond, batch)  # (B or 2B, L, D)
        if self._guided():
            sample = torch.cat([sample, sample])  # (2B, C, h, w)
        timestep = torch.tensor(self._timestep(sigma), device=self.device)
        timestep_cond = None if self.timestep_cond is None else self.timestep_cond.expand(sample.shape[0], -1)
        output = self.pipe.unet(
            sample, timestep, encoder_hidden_states=context, timestep_cond=timestep_cond, return_dict=False
        )[0]
        return self._x0(x, self._guide(output).to(x.device, x.dtype), sigma)

    def _activation_size(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        return h * w, self.pipe.unet.config.block_out_channels[0]
