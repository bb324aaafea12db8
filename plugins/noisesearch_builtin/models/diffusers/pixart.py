"""PixArt-Sigma (``PixArtSigmaPipeline``): a DiT with T5 cross-attention (with attention mask)
and a learned-sigma output, trained as a DDPM. Chen et al. 2024.

Reproduces the pipeline run with ``DDIMScheduler`` (eta 0) from the same latents and
``use_resolution_binning=False``: images are generated at the requested size (the pipeline's
binning snaps other sizes to its aspect-ratio table and resizes back; square default sizes are
unaffected). T5 prompt length 300; "" as the negative prompt when none is given; guidance on
``[uncond, cond]``, then the first C output channels (the variance channels are dropped);
decoding of ``latents / scaling_factor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch_builtin.models.diffusers.base import VariancePreservingModel, transformer_patch

if TYPE_CHECKING:
    import torch

    from noisesearch import Condition


@dataclass
class MaskedPromptEmbeddings:
    """T5 conditioning with attention masks, both guidance branches, batch dimension 1."""

    cond: torch.Tensor  # (1, L, D)
    mask: torch.Tensor  # (1, L) 1 for prompt tokens, 0 for padding
    uncond: torch.Tensor | None
    uncond_mask: torch.Tensor | None


class PixArtSigmaModel(VariancePreservingModel):
    """PixArt-Sigma pipeline (DiT with T5 cross-attention, learned sigma).

    :param max_sequence_length: T5 prompt length in tokens (the pipeline's 300).
    :param clean_caption: clean prompts as the pipeline does by default (needs beautifulsoup4 and
        ftfy; without them the pipeline, and so this model, skips cleaning).
    """

    pipeline_classes: ClassVar[tuple[str, ...]] = ("PixArtSigmaPipeline",)
    default_guidance_scale: ClassVar[float] = 4.5
    default_steps: ClassVar[int] = 30  # Ma et al. 2025 search PixArt-Sigma with 30 steps

    def __init__(
        self,
        max_sequence_length: int = 300,
        clean_caption: bool = True,
        **options: Any,
    ) -> None:
        self.max_sequence_length = int(max_sequence_length)
        self.clean_caption = bool(clean_caption)
        super().__init__(**options)  # the options every diffusers model takes

    @classmethod
    def _patch_multiple(cls, path: str) -> int:
        return transformer_patch(path)

    def _setup(self, height: int | None, width: int | None) -> None:
        self._setup_schedule()
        config = self.pipe.transformer.config
        factor = self.pipe.vae_scale_factor
        self.height, self.width = self._resolution(
            height, width, config.sample_size * factor, factor * config.patch_size
        )
        self.latent_shape = (config.in_channels, self.height // factor, self.width // factor)

    def _encode(self, condition: Condition) -> MaskedPromptEmbeddings:
        cond, mask, uncond, uncond_mask = self.pipe.encode_prompt(
            condition.prompt,
            do_classifier_free_guidance=self._guided(),
            negative_prompt=condition.negative_prompt or "",
            num_images_per_prompt=1,
            device=self.device,
            clean_caption=self.clean_caption,
            max_sequence_length=self.max_sequence_length,
        )
        return MaskedPromptEmbeddings(cond, mask, uncond, uncond_mask)

    def denoise(self, x: torch.Tensor, sigma: float, prepared: MaskedPromptEmbeddings) -> torch.Tensor:
        import torch

        batch, channels = x.shape[0], x.shape[1]  # x: (B, C, h, w), float32
        sample = x.to(self.device, self.weights_dtype)
        context = self._batched(prepared.cond, prepared.uncond, batch)  # (B or 2B, L, D)
        mask = self._batched(prepared.mask, prepared.uncond_mask, batch)  # (B or 2B, L)
        if self._guided():
            sample = torch.cat([sample, sample])
        timestep = torch.tensor([self._timestep(sigma)], device=self.device).expand(sample.shape[0])
        output = self.pipe.transformer(
            sample,
            encoder_hidden_states=context,
            encoder_attention_mask=mask,
            timestep=timestep,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]  # (rows, 2C, h, w) with learned sigma
        output = self._guide(output)
        if self.pipe.transformer.config.out_channels // 2 == channels:
            output = output[:, :channels]  # drop the learned variance
        return self._x0(x, output.to(x.device, x.dtype), sigma)

    def pipeline_call(self, solver: str, steps: int) -> dict[str, Any]:
        call = super().pipeline_call(solver, steps)
        call["kwargs"]["use_resolution_binning"] = False  # the run's size, not the nearest bin
        # the prompt's T5 tokens as this model encoded them
        call["kwargs"].update(max_sequence_length=self.max_sequence_length, clean_caption=self.clean_caption)
        return call

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.to(self.pipe.vae.dtype) / self.pipe.vae.config.scaling_factor

    def _activation_size(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        config = self.pipe.transformer.config
        tokens = (h // config.patch_size) * (w // config.patch_size)
        return tokens, config.num_attention_heads * config.attention_head_dim
