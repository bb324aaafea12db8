"""One CLIP model per (architecture, weights, device, dtype), shared by every CLIP verifier.

``clip-score``, ``aesthetic``, ``clip-zeroshot`` and ``consistency`` (CLIP backbone) all run an
open_clip model; an ensemble of them, or a verifier and an evaluator, would otherwise hold the
same ViT-L/14 (1.7 GB in fp32) several times. :func:`load_clip` caches per process; call
:func:`clear_cache` to free the memory. Not a plugin: it registers nothing.

Images are preprocessed with open_clip's own inference transform (resize the short side,
centre crop, normalise), applied to batched tensors on the model's device.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from noisesearch import devices

if TYPE_CHECKING:
    import torch

#: The CLIP the paper's text-to-image verifiers use: OpenAI's ViT-L/14 (the aesthetic
#: predictor was trained on its embeddings; CLIPScore is commonly reported with it).
DEFAULT_ARCHITECTURE = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"

_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}

_lock = threading.Lock()
_cache: dict[tuple[str, str, str, str], ClipBackbone] = {}
_loads = 0  # how many models were actually built: a test counts them


def resolve_device(device: str | None) -> str:
    """The device name (the cache key) for an option value: ``noisesearch.devices``' rule."""
    return str(devices.resolve_device(device))


def resolve_dtype(dtype: str | None, device: str) -> str:
    """The dtype name (the cache key) for an option value: ``noisesearch.devices``' rule."""
    return devices.dtype_name(devices.resolve_dtype(dtype, device))


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


class ClipBackbone:
    """An open_clip model with its tokenizer and tensor preprocessing; built by :func:`load_clip`."""

    def __init__(self, architecture: str, pretrained: str | None, device: str, dtype: str) -> None:
        import open_clip

        self.architecture = architecture
        self.pretrained = pretrained
        self.device = device
        self.dtype = torch_dtype(dtype)
        force_quick_gelu = False
        if pretrained and not os.path.isfile(pretrained):
            # OpenAI's weights were trained with QuickGELU, which the plain configs (ViT-L-14)
            # do not use: take the activation the tag was trained with, as open_clip advises.
            tag = open_clip.get_pretrained_cfg(architecture, pretrained)
            force_quick_gelu = bool(tag.get("quick_gelu", False))
        self.model = open_clip.create_model(
            architecture,
            pretrained=pretrained,
            precision=_PRECISION[dtype],
            device=device,
            force_quick_gelu=force_quick_gelu,
        ).eval()
        self.model.requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(architecture)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        transform = open_clip.image_transform(
            cfg["size"],
            is_train=False,
            mean=cfg.get("mean"),
            std=cfg.get("std"),
            resize_mode=cfg.get("resize_mode"),
            interpolation=cfg.get("interpolation"),
            fill_color=cfg.get("fill_color", 0),
        )
        steps = list(transform.transforms)
        # Resize and crop, then normalise; the PIL path clamps after bicubic resizing, so do we.
        self._geometry, self._normalize = steps[:-1], steps[-1]

    @property
    def embed_dim(self) -> int | None:
        """The image embedding size, where the vision tower says (open_clip's own towers do)."""
        dim = getattr(self.model.visual, "output_dim", None)
        return int(dim) if dim is not None else None

    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], any size -> model input (B, 3, S, S) on the model's device."""
        x = images.to(self.device, dtype=torch_dtype("float32"))
        for step in self._geometry:
            x = step(x)  # open_clip's Resize / CenterCrop; its PIL-only steps pass tensors through
        x = x.clamp(0.0, 1.0)
        return self._normalize(x).to(self.dtype)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, D), float32."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(self.preprocess(images))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), float32."""
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            features = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features.float(), dim=-1)


def cache_key(
    architecture: str, pretrained: str | None, device: str | None, dtype: str | None
) -> tuple[str, str, str, str]:
    """What makes two verifiers' CLIPs the same model; local files compare by absolute path."""
    device = resolve_device(device)
    weights = pretrained or ""
    if weights and os.path.isfile(weights):
        weights = os.path.abspath(weights)
    return (architecture, weights, device, resolve_dtype(dtype, device))


def load_clip(
    architecture: str = DEFAULT_ARCHITECTURE,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str | None = None,
    dtype: str | None = None,
) -> ClipBackbone:
    """The shared CLIP for these settings, built on first use.

    :param architecture: an open_clip architecture name (``open_clip.list_models()``), or an
        ``hf-hub:`` / ``local-dir:`` model name.
    :param pretrained: an open_clip pretrained tag (``"openai"``), a local checkpoint file, or
        ``None`` for random weights.
    """
    global _loads
    key = cache_key(architecture, pretrained, device, dtype)
    with _lock:
        backbone = _cache.get(key)
        if backbone is None:
            backbone = ClipBackbone(key[0], key[1] or None, key[2], key[3])
            _cache[key] = backbone
            _loads += 1
        return backbone


def cached_backbones() -> list[tuple[str, str, str, str]]:
    """The keys of the models loaded so far: (architecture, weights, device, dtype)."""
    with _lock:
        return list(_cache)


def load_count() -> int:
    """How many CLIP models this process has built (cache hits excluded)."""
    return _loads


def clear_cache() -> None:
    """Forget every loaded model (verifiers holding one keep theirs)."""
    with _lock:
        _cache.clear()
