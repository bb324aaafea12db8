"""DiT (``DiTPipeline``): a class-conditional diffusion transformer on ImageNet latents with a
learned-sigma output, trained as a DDPM. Peebles & Xie 2023.

Labels are ImageNet class indices; ``--label "golden retriever"`` works through the class names
(the 1,000 ImageNet-1k names, one per class, in index order, as torchvision lists them) when the
pipeline has 1,000 classes, or through the first name of each entry of ``model_index.json``'s
``id2label`` otherwise.

Reproduces the pipeline (which takes no ``latents=``; give it a CPU generator and this model the
same noise): guidance on ``[cond, null]`` with the null class ``num_embeds_ada_norm`` (1000),
applied to the first C output channels only (the learned-variance channels are dropped), then
DDIM (eta 0) on the DDIM grid of the pipeline's scheduler configuration; decoding of
``(1 / scaling_factor) * latents`` (DiT's own expression; not bitwise equal to dividing).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch_builtin.models.diffusers import index
from noisesearch_builtin.models.diffusers.base import VariancePreservingModel

if TYPE_CHECKING:
    import torch

    from noisesearch import Condition

#: ImageNet-1k class names, one per line in index order (torchvision's list, BSD-3-Clause).
IMAGENET_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, index = class id."""
    names = tuple(line.strip() for line in IMAGENET_CLASSES_FILE.read_text().splitlines() if line.strip())
    assert len(names) == 1000, len(names)
    return names


class DiTModel(VariancePreservingModel):
    """DiT pipeline: class-conditional ImageNet diffusion transformer (labels by index or name).

    :param path: Hugging Face hub id or local folder of the pipeline (``save_pretrained`` layout);
        presets default to their hub id.
    :param guidance_scale: classifier-free guidance scale against the null class; None: 4.0, the
        pipeline's default. Values <= 1 disable guidance.
    """

    pipeline_classes: ClassVar[tuple[str, ...]] = ("DiTPipeline",)
    conditioning: ClassVar[str] = "label"
    num_classes: ClassVar[int | None] = 1000
    default_guidance_scale: ClassVar[float] = 4.0
    default_steps: ClassVar[int] = 50  # Ma et al. 2025 search DiT/SiT with 50 steps per candidate

    @classmethod
    def _traits(cls, path: str) -> dict[str, Any]:
        """Number of classes from ``transformer/config.json`` and names for label lookup."""
        traits = super()._traits(path)
        num_classes = cls.num_classes
        if path != cls.default_path:
            config = index.read_json(path, "transformer/config.json", required=False) or {}
            num_classes = int(config.get("num_embeds_ada_norm") or num_classes or 1000)
        names: tuple[str, ...] | None = None
        if num_classes == 1000:
            names = imagenet_class_names()
        elif path != cls.default_path:
            id2label = (index.read_json(path, "model_index.json") or {}).get("id2label") or {}
            if len(id2label) == num_classes:
                names = tuple(str(id2label[str(i)]).split(",")[0].strip() for i in range(num_classes))
        return {**traits, "num_classes": num_classes, "class_names": names}

    def __init__(
        self,
        path: str | None = None,
        guidance_scale: float | None = None,
        device: str = "auto",
        dtype: str = "auto",
        cpu_offload: bool | str = False,
        variant: str | None = None,
        use_safetensors: bool = True,
        scheduler: str | None = None,
        scheduler_options: dict[str, Any] | None = None,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        compile: bool | str = False,  # noqa: A002 - the option's name, as --model-opt compile=MODE
        compile_backend: str | None = None,
    ) -> None:
        super().__init__(path, guidance_scale, None, None, device, dtype, cpu_offload, variant,
                         use_safetensors, scheduler, scheduler_options, None, vae_slicing, vae_tiling,
                         compile=compile, compile_backend=compile_backend)

    def _setup(self, height: int | None, width: int | None) -> None:
        self._setup_schedule()
        config = self.pipe.transformer.config
        self.num_classes = int(config.num_embeds_ada_norm)  # type: ignore[misc]  # the loaded truth
        self.null_class = self.num_classes  # DiT's label embedding has one extra row: the null class
        self.class_names = imagenet_class_names() if self.num_classes == 1000 else None  # type: ignore[misc]
        size = config.sample_size  # latent side
        factor = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        self.height = self.width = size * factor
        self.latent_shape = (config.in_channels, size, size)

    def _encode(self, condition: Condition) -> int:
        return int(condition.label)

    def denoise(self, x: torch.Tensor, sigma: float, prepared: int) -> torch.Tensor:
        import torch

        batch, channels = x.shape[0], x.shape[1]  # x: (B, C, h, w), float32
        sample = x.to(self.device, self.weights_dtype)
        labels = torch.full((batch,), prepared, dtype=torch.long, device=self.device)
        if self._guided():
            sample = torch.cat([sample, sample])
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])  # [cond, null]
        timestep = torch.tensor([self._timestep(sigma)], device=self.device).expand(sample.shape[0])
        output = self.pipe.transformer(sample, timestep=timestep, class_labels=labels).sample
        # output: (rows, 2C, h, w) with learned sigma
        eps = output[:, :channels]  # the learned-variance channels are never guided nor used
        if self._guided():
            cond, uncond = eps.split(batch)
            eps = uncond + self.guidance_scale * (cond - uncond)
        return self._x0(x, eps.to(x.device, x.dtype), sigma)

    latents_scaling = "none: DiTPipeline takes no latents= (give it a CPU generator of the seed)"

    def pipeline_latents(self, noise: torch.Tensor) -> None:
        return None  # DiTPipeline draws its own latents

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        return 1 / self.pipe.vae.config.scaling_factor * latents

    def _activation_size(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        config = self.pipe.transformer.config
        tokens = (h // config.patch_size) * (w // config.patch_size)
        return tokens, config.num_attention_heads * config.attention_head_dim
