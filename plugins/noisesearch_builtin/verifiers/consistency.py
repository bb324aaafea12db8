"""Self-supervised consistency verifier (Ma et al. 2025, "self-supervised" verifiers).

The cosine similarity between the features of the model's clean prediction ``x0_hat`` at noise
level 0.4 and of the final sample: a noise whose early prediction already looks like the final
image tends to give a coherent sample. Needs no label or prompt, only the trajectory; it helps
class-conditional generation and barely text-to-image.

Features: DINOv2's CLS token after the final layer norm (transformers ``Dinov2Model``
``pooler_output``), preprocessed by the checkpoint's own image processor; or CLIP's normalised
image embedding (open_clip, shared with the other CLIP verifiers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition, hookimpl
from noisesearch_builtin.verifiers.clip_backbone import DEFAULT_ARCHITECTURE, DEFAULT_PRETRAINED

if TYPE_CHECKING:
    import torch

    from noisesearch.registry import Register

BACKBONES = ("dino", "clip")
#: DINOv2 ViT-B/14, the size of the paper's DINO verifiers.
DEFAULT_DINO = "facebook/dinov2-base"
#: The level the paper compares at (0 = clean, 1 = pure noise).
LEVEL = 0.4
#: DINOv2's published preprocessing, used when a local folder has no preprocessor_config.json.
DINOV2_PROCESSOR: dict[str, Any] = {
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


class Consistency:
    """Cosine similarity of DINO (or CLIP) features of x0_hat at level 0.4 and of the final image.

    :param backbone: ``dino`` (transformers Dinov2Model) or ``clip`` (open_clip).
    :param model: for ``dino``, a Hugging Face model id or a local folder written by
        ``save_pretrained`` (default facebook/dinov2-base); for ``clip``, an open_clip
        architecture (default ViT-L-14).
    :param pretrained: ``clip`` only: open_clip pretrained tag or local checkpoint file.
    :param device: torch device; default: CUDA if available, else the CPU.
    :param dtype: float32, float16 or bfloat16; default: float16 on CUDA, float32 on the CPU.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"trajectory"})
    trajectory_levels: ClassVar[tuple[float, ...]] = (LEVEL,)

    def __init__(
        self,
        backbone: str = "dino",
        model: str | None = None,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        from noisesearch_builtin.verifiers.clip_backbone import (
            load_clip,
            resolve_device,
            resolve_dtype,
            torch_dtype,
        )

        if backbone not in BACKBONES:
            raise ValueError(f"consistency: backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
        self.backbone = backbone
        self.device = resolve_device(device)
        self.dtype = torch_dtype(resolve_dtype(dtype, self.device))
        if backbone == "clip":
            self.clip = load_clip(model or DEFAULT_ARCHITECTURE, pretrained, device, dtype)
            return
        from transformers import AutoImageProcessor, BitImageProcessor, Dinov2Model

        model = model or DEFAULT_DINO
        self.dino = Dinov2Model.from_pretrained(model, dtype=self.dtype).to(self.device).eval()
        self.dino.requires_grad_(False)
        if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "preprocessor_config.json")):
            self.processor = BitImageProcessor(**DINOV2_PROCESSOR)
        else:
            self.processor = AutoImageProcessor.from_pretrained(model)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised features (B, D), float32, of images (B, 3, H, W) in [0, 1]."""
        import torch

        if self.backbone == "clip":
            return self.clip.encode_images(images)
        with torch.inference_mode():
            pixels = self.processor(
                images=images.float().clamp(0, 1), do_rescale=False, return_tensors="pt", device=self.device
            )["pixel_values"]
            output = self.dino(pixel_values=pixels.to(self.device, self.dtype))
        return torch.nn.functional.normalize(output.pooler_output.float(), dim=-1)

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if not trajectory:
            raise ValueError(
                f"consistency needs the clean prediction at level {LEVEL} (trajectory); none was given"
            )
        # The engine keys it by the nearest grid level, and may pass other verifiers' levels too.
        level = min(trajectory, key=lambda key: abs(float(key) - LEVEL))
        early = trajectory[level]
        if early.shape[0] != images.shape[0]:
            raise ValueError(
                f"consistency: {early.shape[0]} trajectory images for {images.shape[0]} final images"
            )
        if early.shape[1:] == images.shape[1:]:  # one pass through the backbone for both
            import torch

            first, final = self.features(torch.cat([early.to(images.device), images])).chunk(2)
        else:
            first, final = self.features(early), self.features(images)
        return (first * final).sum(dim=1)


@hookimpl
def register_verifiers(register: Register) -> None:
    register("consistency", Consistency)
