"""Stable Diffusion 3 (``StableDiffusion3Pipeline``): an MMDiT rectified-flow transformer
conditioned on two CLIP encoders and T5 (joint sequence) and the CLIPs' pooled projections.
Esser et al. 2024.

Reproduces the pipeline run with ``FlowMatchEulerDiscreteScheduler`` from the same latents: its
shifted sigma grid (the configuration's ``shift``, applied in ``set_timesteps`` on top of the
already-shifted range, so the last sigma is not the unshifted minimum; ``mu`` from the image size
with dynamic shifting), guidance on ``[uncond, cond]`` with "" as the default negative prompt,
timestep ``1000 sigma``, decoding of ``latents / scaling_factor + shift_factor``.

Skip-layer guidance (``skip_guidance_layers``, as the pipeline's argument of that name, Stability's
SD3.5 recipe): on the steps ``i`` of the run's grid with ``steps * start < i < steps * stop``, one
more forward of the conditional branch with those transformer blocks skipped, and the guided
velocity gains ``scale * (cond - skipped)``: the pipeline's own formula and window. The step index
is that of the level in the grid of the run's ``levels(steps)`` (nearest level), so it holds for the
core's flow Euler and ``--solver native``. Like guidance's second branch, the extra forward is not
counted as an NFE. Not with img2img (SD3's img2img pipeline has no skip-layer guidance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch.errors import ConfigError
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
    :param skip_guidance_layers: transformer block indices for skip-layer guidance (SD3.5 Medium
        uses [7, 8, 9]); None: off. Needs classifier-free guidance (guidance_scale > 1).
    :param skip_layer_guidance_scale: its weight (the pipeline's default 2.8).
    :param skip_layer_guidance_start: it runs on steps i with steps * start < i < steps * stop
        (the pipeline's defaults 0.01 and 0.2).
    :param skip_layer_guidance_stop: see skip_layer_guidance_start.
    """

    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline",)
    default_guidance_scale: ClassVar[float] = 7.0
    default_steps: ClassVar[int] = 28
    cuda_dtype: ClassVar[str] = "float16"
    img2img_family: ClassVar[bool] = True

    def __init__(
        self,
        max_sequence_length: int = 256,
        skip_guidance_layers: list[int] | None = None,
        skip_layer_guidance_scale: float = 2.8,
        skip_layer_guidance_start: float = 0.01,
        skip_layer_guidance_stop: float = 0.2,
        **options: Any,
    ) -> None:
        self.max_sequence_length = int(max_sequence_length)
        self.skip_guidance_layers = check_skip_layer_guidance(
            skip_guidance_layers, skip_layer_guidance_scale, skip_layer_guidance_start,
            skip_layer_guidance_stop, options.get("init_image"))
        self.skip_layer_guidance_scale = float(skip_layer_guidance_scale)
        self.skip_layer_guidance_window = (float(skip_layer_guidance_start), float(skip_layer_guidance_stop))
        self._grid: list[float] = []  # the run's levels(steps), for skip-layer guidance's step index
        super().__init__(**options)  # the options every diffusers model takes
        blocks = len(self.pipe.transformer.transformer_blocks)
        if self.skip_guidance_layers and max(self.skip_guidance_layers) >= blocks:
            raise ConfigError("skip_guidance_layers", f"this transformer has blocks 0 to {blocks - 1}, "
                              f"got {self.skip_guidance_layers}")

    @classmethod
    def check_before_loading(
        cls,
        path: str,
        skip_guidance_layers: Any = None,
        skip_layer_guidance_scale: Any = 2.8,
        skip_layer_guidance_start: Any = 0.01,
        skip_layer_guidance_stop: Any = 0.2,
        **options: Any,
    ) -> None:
        check_skip_layer_guidance(skip_guidance_layers, skip_layer_guidance_scale, skip_layer_guidance_start,
                                  skip_layer_guidance_stop, options.get("init_image"))
        super().check_before_loading(path, **options)

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
        grid = self._from_start(self._flow_levels(steps, num_inference_steps=steps, **extra), steps)
        self._grid = list(grid)
        return grid

    def _native_timesteps(self, steps: int) -> dict[str, Any]:
        """As ``StableDiffusion3Pipeline``: ``num_inference_steps``, and ``mu`` with dynamic shifting."""
        if self.skip_guidance_layers:
            self.levels(steps)  # the grid skip-layer guidance counts its steps on
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
        guided = self._guide(velocity)  # (B, C, h, w)
        if self._skips_layers(sigma):
            rows = slice(batch, None)  # the conditional half of [uncond, cond]
            skipped = self.pipe.transformer(
                hidden_states=sample[rows],
                timestep=timestep[rows],
                encoder_hidden_states=context[rows],
                pooled_projections=pooled[rows],
                skip_layers=self.skip_guidance_layers,
                return_dict=False,
            )[0]
            guided = guided + (velocity[rows] - skipped) * self.skip_layer_guidance_scale
        return self._x0(x, guided.to(x.device, x.dtype), sigma)

    def _skips_layers(self, sigma: float) -> bool:
        """Whether skip-layer guidance runs at this level: the pipeline's window on the index of
        the nearest level of the run's grid (its last level, the clean end, is never solved from)."""
        if not self.skip_guidance_layers or not self._guided():
            return False
        if not self._grid:
            raise RuntimeError("skip-layer guidance needs the run's grid: call levels(steps) first")
        steps = len(self._grid) - 1
        i = min(range(steps), key=lambda k: abs(self._grid[k] - sigma))
        start, stop = self.skip_layer_guidance_window
        return steps * start < i < steps * stop

    def pipeline_call(self, solver: str, steps: int) -> dict[str, Any]:
        call = super().pipeline_call(solver, steps)
        call["kwargs"]["max_sequence_length"] = self.max_sequence_length  # T5's tokens change the image
        if self.skip_guidance_layers:
            start, stop = self.skip_layer_guidance_window
            call["kwargs"].update(skip_guidance_layers=list(self.skip_guidance_layers),
                                  skip_layer_guidance_scale=self.skip_layer_guidance_scale,
                                  skip_layer_guidance_start=start, skip_layer_guidance_stop=stop)
        return call

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        return latents / config.scaling_factor + config.shift_factor

    def _activation_size(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        config = self.pipe.transformer.config
        tokens = (h // self.patch) * (w // self.patch) + 77 + self.max_sequence_length
        return tokens, config.num_attention_heads * config.attention_head_dim


def check_skip_layer_guidance(layers: Any, scale: Any, start: Any, stop: Any, init_image: Any) -> list[int]:
    """The skip-layer guidance options (before loading): block indices, a number scale, a window
    ``0 <= start < stop <= 1``, and no init image. Returns the indices ([] when off)."""
    if layers is None or layers == []:
        return []
    if (not isinstance(layers, (list, tuple)) or not all(isinstance(k, int) and not isinstance(k, bool)
                                                        and k >= 0 for k in layers)):
        raise ConfigError("skip_guidance_layers", f"must be a list of transformer block indices, e.g. "
                          f"[7, 8, 9], got {layers!r}")
    for field, value in (("skip_layer_guidance_scale", scale), ("skip_layer_guidance_start", start),
                         ("skip_layer_guidance_stop", stop)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(field, f"must be a number, got {value!r}")
    if not 0.0 <= float(start) < float(stop) <= 1.0:
        raise ConfigError("skip_layer_guidance_start",
                          f"needs 0 <= start < stop <= 1, got {start} and {stop}")
    if init_image is not None:
        raise ConfigError("skip_guidance_layers", "SD3's img2img pipeline has no skip-layer guidance; "
                          "leave it off with --init-image")
    return [int(k) for k in layers]
