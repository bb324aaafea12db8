"""Base of the rectified-flow adapters (SD3, FLUX.1).

Level = the flow scheduler's sigma: ``x = (1 - sigma) x0 + sigma eps``; the network predicts the
velocity ``v = eps - x0`` at timestep ``1000 sigma``, so ``x0_hat = x - sigma v``, and the core's
``ddim`` solver is then exactly diffusers' ``FlowMatchEulerDiscreteScheduler`` step
``x + (sigma' - sigma) v``. Initial latents are plain N(0, I), unscaled, as in these pipelines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from noisesearch.sampling import RectifiedFlow
from noisesearch_builtin.models.diffusers.base import DiffusersModel, scheduler_like

if TYPE_CHECKING:
    import torch


class FlowModel(DiffusersModel):
    """Adapters of flow-matching networks (velocity prediction)."""

    cuda_dtype = "bfloat16"
    img2img_flow_rounding = True  # t_start as the SD3 and FLUX img2img pipelines round it
    #: The SD3 and FLUX pipelines call ``scheduler.step`` without their generator: a stochastic
    #: scheduler's step noise then comes from torch's global generator, so the pipeline given
    #: ``latents=`` and the recorded step-noise seeds cannot regenerate a stochastic run.
    pipeline_step_generator = False

    def _setup_schedule(self) -> None:
        config = self.pipe.scheduler.config
        shift = 1.0 if config.get("use_dynamic_shifting") else float(config.get("shift", 1.0))
        self.schedule = RectifiedFlow(shift=shift)

    def _flow_levels(self, steps: int, **set_timesteps: Any) -> list[float]:
        """The sigmas of diffusers' flow-matching Euler scheduler, built from this pipeline's
        configuration with ``set_timesteps(**set_timesteps)``, ending at 0."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = scheduler_like(FlowMatchEulerDiscreteScheduler, self.pipe.scheduler.config)
        scheduler.set_timesteps(**set_timesteps)
        return [float(s) for s in scheduler.sigmas.tolist()]

    def _dynamic_shift(self, image_seq_len: int, max_shift_default: float) -> float | None:
        """The resolution-dependent shift ``mu`` (FLUX.1, SD3.5 with dynamic shifting): linear in
        the number of image tokens between the configuration's base and max lengths."""
        config = self.pipe.scheduler.config
        if not config.get("use_dynamic_shifting"):
            return None
        base_len = config.get("base_image_seq_len", 256)
        max_len = config.get("max_image_seq_len", 4096)
        base_shift = config.get("base_shift", 0.5)
        max_shift = config.get("max_shift", max_shift_default)
        slope = (max_shift - base_shift) / (max_len - base_len)
        return image_seq_len * slope + (base_shift - slope * base_len)

    latents_scaling = "unscaled N(0, I) noise, shape (1, C, h, w), as the pipeline takes it (flow)"

    def _image_latents(self, encoded: torch.Tensor) -> torch.Tensor:
        """``(z - shift_factor) * scaling_factor``, as the SD3 and FLUX img2img pipelines."""
        config = self.pipe.vae.config
        return (encoded - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor

    def _core_solver_scheduler(self) -> str:
        return "FlowMatchEulerDiscreteScheduler"  # the core's ddim is its Euler step on flows

    def _x0(self, x: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
        return x - sigma * velocity

    def _native_level(self, scheduler: Any, i: int) -> float:
        """The scheduler's sigma at step ``i`` (its last one at the end)."""
        return float(scheduler.sigmas[i])

    def _native_output(self, x: torch.Tensor, x0: torch.Tensor, level: float) -> torch.Tensor:
        return (x - x0) / level  # the velocity
