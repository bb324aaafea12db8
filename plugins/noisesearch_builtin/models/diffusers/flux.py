"""FLUX.1 (``FluxPipeline``): a rectified-flow transformer over 2x2-packed latents, conditioned on
T5 hidden states and CLIP's pooled output. Black Forest Labs 2024.

FLUX.1-dev is guidance-distilled: the guidance scale is an *input* of the network, so a step is
one forward with no unconditional branch. FLUX.1-schnell is timestep-distilled (no guidance
input, 4 steps). ``true_cfg_scale`` > 1 with a negative prompt adds real classifier-free guidance
(a second branch, batched with the first).

Conventions reproduced from the pipeline: latents are ``(C, h, w)`` here (``C = in_channels / 4``)
and packed to ``(h/2 * w/2, 4C)`` tokens for each forward (diffusers' ``_pack_latents``), so a
seed's noise equals the pipeline's own draw for a CPU generator; the grid is
``linspace(1, 1/steps, steps)`` shifted by the image-size-dependent ``mu``, then 0; the network
takes ``timestep / 1000`` in the latents' dtype and ``guidance`` in float32; decoding unpacks and
applies ``latents / scaling_factor + shift_factor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch.errors import ConfigError
from noisesearch_builtin.models.diffusers.flow import FlowModel

if TYPE_CHECKING:
    import torch

    from noisesearch import Condition


@dataclass
class FluxPromptEmbeddings:
    """FLUX's conditioning for one prompt, batch dimension 1."""

    cond: torch.Tensor  # (1, max_sequence_length, D) T5 hidden states
    pooled: torch.Tensor  # (1, P) CLIP pooled output
    text_ids: torch.Tensor  # (max_sequence_length, 3) zeros: text positions for RoPE
    uncond: torch.Tensor | None  # negative prompt's, for true CFG only
    uncond_pooled: torch.Tensor | None


class FluxModel(FlowModel):
    """FLUX.1 pipeline (packed-latent flow transformer; embedded guidance for dev, none for schnell).

    :param max_sequence_length: T5 prompt length in tokens; None: 512 (FLUX.1-schnell: 256).
    :param true_cfg_scale: real classifier-free guidance against the negative prompt, used when
        > 1 and a negative prompt is given (two branches per forward); 1 disables it.
    """

    pipeline_classes: ClassVar[tuple[str, ...]] = ("FluxPipeline",)
    default_guidance_scale: ClassVar[float] = 3.5
    default_steps: ClassVar[int] = 30  # Ma et al. 2025 search FLUX.1-dev with 30 steps
    default_max_sequence_length: ClassVar[int] = 512
    img2img_family: ClassVar[bool] = True

    def __init__(
        self,
        max_sequence_length: int | None = None,
        true_cfg_scale: float = 1.0,
        **options: Any,
    ) -> None:
        length = self.default_max_sequence_length if max_sequence_length is None else max_sequence_length
        self.max_sequence_length = int(length)
        self.true_cfg_scale = float(true_cfg_scale)
        super().__init__(**options)  # the options every diffusers model takes

    @classmethod
    def _patch_multiple(cls, path: str) -> int:
        return 2  # latents are packed in 2x2 patches

    def _setup(self, height: int | None, width: int | None) -> None:
        import torch

        self._setup_schedule()
        transformer = self.pipe.transformer
        factor = self.pipe.vae_scale_factor
        default = self.pipe.default_sample_size * factor
        self.height, self.width = self._resolution(height, width, default, factor * 2)
        h, w = 2 * (self.height // (factor * 2)), 2 * (self.width // (factor * 2))
        self.latent_shape = (transformer.config.in_channels // 4, h, w)
        self.guidance_embeds = bool(transformer.config.guidance_embeds)
        ids = torch.zeros(h // 2, w // 2, 3)  # RoPE positions of the packed tokens: (0, row, col)
        ids[..., 1] += torch.arange(h // 2)[:, None]
        ids[..., 2] += torch.arange(w // 2)[None, :]
        self.image_ids = ids.reshape(-1, 3).to(self.device)  # (h/2 * w/2, 3)

    def _guided(self) -> bool:
        """Whether a second (negative-prompt) branch may run: true CFG only (it runs when the
        condition also has a negative prompt)."""
        return self.true_cfg_scale > 1.0

    @classmethod
    def _check_negative_prompt_of(cls, path: str, options: dict[str, Any], negative: str | None) -> None:
        cls._check_true_cfg(negative, float(options.get("true_cfg_scale", 1.0)))

    def check_negative_prompt(self, negative: str | None) -> None:
        self._check_true_cfg(negative, self.true_cfg_scale)

    @staticmethod
    def _check_true_cfg(negative: str | None, true_cfg_scale: float) -> None:
        """FLUX.1 runs a negative-prompt branch only for true CFG, which needs both (as FluxPipeline):
        either alone would be recorded in run.json with no effect on the images."""
        if negative is not None and true_cfg_scale <= 1.0:
            raise ConfigError("negative_prompt", "FLUX.1 reads a negative prompt only with true CFG: set "
                              "--model-opt true_cfg_scale above 1 (as FluxPipeline), or leave it out")
        if negative is None and true_cfg_scale > 1.0:
            raise ConfigError("true_cfg_scale", f"{true_cfg_scale:g} runs true CFG against a negative "
                              f"prompt (as FluxPipeline), and none is given: give --negative-prompt, or "
                              f"leave true_cfg_scale at 1")

    def levels(self, steps: int) -> list[float]:
        """The pipeline's grid: ``linspace(1, 1/steps, steps)`` shifted by ``mu``, then 0."""
        import numpy as np

        _, h, w = self.latent_shape
        mu = self._dynamic_shift((h // 2) * (w // 2), max_shift_default=1.15)
        if self.pipe.scheduler.config.get("use_flow_sigmas"):
            levels = self._flow_levels(steps, num_inference_steps=steps, mu=mu)
        else:
            levels = self._flow_levels(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return self._from_start(levels, steps)  # img2img: from the noised image's level

    def _native_timesteps(self, steps: int) -> dict[str, Any]:
        """As ``FluxPipeline``: ``sigmas=linspace(1, 1/steps, steps)`` and ``mu``."""
        import numpy as np

        _, h, w = self.latent_shape
        mu = self._dynamic_shift((h // 2) * (w // 2), max_shift_default=1.15)
        if self.pipe.scheduler.config.get("use_flow_sigmas"):
            return {"num_inference_steps": steps, "mu": mu, "device": self.device}
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu, "device": self.device}

    def _encode(self, condition: Condition) -> FluxPromptEmbeddings:
        cond, pooled, text_ids = self.pipe.encode_prompt(
            prompt=condition.prompt,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        uncond = uncond_pooled = None
        if self._guided() and condition.negative_prompt is not None:
            uncond, uncond_pooled, _ = self.pipe.encode_prompt(
                prompt=condition.negative_prompt,
                prompt_2=None,
                device=self.device,
                num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length,
            )
        return FluxPromptEmbeddings(cond, pooled, text_ids, uncond, uncond_pooled)

    def denoise(self, x: torch.Tensor, sigma: float, prepared: FluxPromptEmbeddings) -> torch.Tensor:
        import torch

        batch, (channels, h, w) = x.shape[0], self.latent_shape  # x: (B, C, h, w), float32
        sample = x.to(self.device, self.weights_dtype)
        tokens = sample.view(batch, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        tokens = tokens.reshape(batch, (h // 2) * (w // 2), channels * 4)  # (B, N, 4C) packed
        context = prepared.cond.expand(batch, -1, -1)  # (B, L, D)
        pooled = prepared.pooled.expand(batch, -1)  # (B, P)
        guided = prepared.uncond is not None
        if guided:
            tokens = torch.cat([tokens, tokens])
            context = torch.cat([prepared.uncond.expand(batch, -1, -1), context])  # [negative, cond]
            pooled = torch.cat([prepared.uncond_pooled.expand(batch, -1), pooled])
        rows = tokens.shape[0]
        # The scheduler's float32 timestep 1000 sigma, cast to the latents' dtype, then / 1000.
        timestep = torch.full((rows,), sigma * 1000.0, dtype=torch.float32, device=self.device)
        timestep = timestep.to(self.weights_dtype) / 1000
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((rows,), self.guidance_scale, dtype=torch.float32, device=self.device)
        velocity = self.pipe.transformer(
            hidden_states=tokens,
            timestep=timestep,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=context,
            txt_ids=prepared.text_ids,
            img_ids=self.image_ids.to(prepared.cond.dtype),
            return_dict=False,
        )[0]  # (rows, N, 4C)
        if guided:
            negative, cond = velocity.chunk(2)
            velocity = negative + self.true_cfg_scale * (cond - negative)
        velocity = velocity.view(batch, h // 2, w // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
        velocity = velocity.reshape(batch, channels, h, w)  # unpacked
        return self._x0(x, velocity.to(x.device, x.dtype), sigma)

    latents_scaling = ("unscaled N(0, I) noise packed as the pipeline packs it (_pack_latents): "
                       "shape (1, h/2 * w/2, 4C); flow: no scaling")

    def pipeline_latents(self, noise: torch.Tensor) -> torch.Tensor:
        """The noises ``(B, C, h, w)`` packed into the pipeline's ``(B, h/2 * w/2, 4C)`` tokens."""
        batch, (channels, h, w) = noise.shape[0], self.latent_shape
        tokens = noise.float().view(batch, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return tokens.reshape(batch, (h // 2) * (w // 2), channels * 4).contiguous()

    def pipeline_call(self, solver: str, steps: int) -> dict[str, Any]:
        call = super().pipeline_call(solver, steps)
        call["kwargs"]["max_sequence_length"] = self.max_sequence_length
        if self.true_cfg_scale > 1.0:
            call["kwargs"]["true_cfg_scale"] = self.true_cfg_scale
        return call

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        return latents / config.scaling_factor + config.shift_factor

    def _activation_size(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        config = self.pipe.transformer.config
        tokens = (h // 2) * (w // 2) + self.max_sequence_length
        return tokens, config.num_attention_heads * config.attention_head_dim
