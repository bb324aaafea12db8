"""One CLIP model per (architecture, weights, device, dtype), shared by every CLIP verifier.

``clip-score``, ``aesthetic``, ``clip-zeroshot`` and ``consistency`` (CLIP backbone) all run an
open_clip model; an ensemble of them, or a verifier and an evaluator, would otherwise hold the
same ViT-L/14 (1.7 GB in fp32) several times. :func:`load_clip` caches per process; call
:func:`clear_cache` to free the memory. Not a plugin: it registers nothing.

Two kinds of CLIP behind one interface: an open_clip architecture (``ViT-L-14`` with a
pretrained tag or checkpoint file), or a transformers ``CLIPModel`` saved with
``save_pretrained`` (a local folder, or ``transformers:<hub id or folder>``), such as the embedded
``shapes`` CLIP. Either way images are preprocessed the model's own way (resize the short side,
centre crop, normalise: open_clip's inference transform, or the folder's
``preprocessor_config.json``), applied to batched tensors on the model's device, and embeddings
are L2-normalised float32.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from noisesearch import devices
from noisesearch_builtin.quiet import quiet_loading

if TYPE_CHECKING:
    import torch

#: The CLIP the paper's text-to-image verifiers use: OpenAI's ViT-L/14 (the aesthetic
#: predictor was trained on its embeddings; CLIPScore is commonly reported with it).
DEFAULT_ARCHITECTURE = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"

_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
#: ``model`` prefix that names a transformers ``CLIPModel`` (hub id or folder) explicitly.
TRANSFORMERS_PREFIX = "transformers:"

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


def transformers_path(architecture: str) -> str | None:
    """The hub id or folder of a transformers ``CLIPModel`` named by ``architecture``, else None.

    A local folder with a ``config.json`` is one (open_clip's own local models are spelt
    ``local-dir:FOLDER``); ``transformers:<hub id or folder>`` names one explicitly.
    """
    if architecture.startswith(TRANSFORMERS_PREFIX):
        return architecture[len(TRANSFORMERS_PREFIX):]
    if os.path.isfile(os.path.join(os.path.expanduser(architecture), "config.json")):
        return os.path.expanduser(architecture)
    return None


class ClipBackbone:
    """A CLIP with its tokenizer and tensor preprocessing; built by :func:`load_clip`.

    ``model`` is the open_clip model or the transformers ``CLIPModel``; everything else
    (:meth:`encode_images`, :meth:`encode_texts`, :meth:`logit_scale`, :attr:`embed_dim`) is the
    same for both.
    """

    def __init__(self, architecture: str, pretrained: str | None, device: str, dtype: str) -> None:
        self.architecture = architecture
        self.pretrained = pretrained
        self.device = device
        self.dtype = torch_dtype(dtype)
        folder = transformers_path(architecture)
        self.kind = "open_clip" if folder is None else "transformers"
        if folder is None:
            self._load_open_clip(architecture, pretrained, dtype)
        else:
            self._load_transformers(folder)

    def _load_open_clip(self, architecture: str, pretrained: str | None, dtype: str) -> None:
        import open_clip

        device = self.device
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

    def _load_transformers(self, folder: str) -> None:
        """A ``CLIPModel`` folder (``save_pretrained``) with its tokenizer and image processor."""
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        with quiet_loading(os.path.isdir(folder)):  # a local folder loads in a blink
            self.model = CLIPModel.from_pretrained(folder, dtype=self.dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(folder)
        self._context_length = int(self.model.config.text_config.max_position_embeddings)
        config = CLIPImageProcessor.from_pretrained(folder)
        self._geometry = [_TensorResizeCrop(config)]
        self._normalize = _TensorNormalize(config)

    @property
    def embed_dim(self) -> int | None:
        """The image embedding size, where the vision tower says (open_clip's own towers do)."""
        if self.kind == "transformers":
            return int(self.model.config.projection_dim)
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

    def encode_images(self, images: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """L2-normalised image embeddings (B, D), float32; with ``grad``, differentiable in the
        images (autograd on; the weights stay frozen)."""
        import torch

        with torch.inference_mode(not grad):
            pixels = self.preprocess(images)  # (B, 3, S, S)
            if self.kind == "transformers":
                features = _pooled(self.model.get_image_features(pixel_values=pixels))
            else:
                features = self.model.encode_image(pixels)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), float32."""
        import torch

        with torch.inference_mode():
            if self.kind == "transformers":
                batch = self.tokenizer(
                    texts, padding=True, truncation=True, max_length=self._context_length,
                    return_tensors="pt",
                ).to(self.device)
                features = _pooled(self.model.get_text_features(**batch))
            else:
                tokens = self.tokenizer(texts).to(self.device)
                features = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features.float(), dim=-1)


    def encode_classes(self, class_names: list[str], templates: Sequence[Any]) -> torch.Tensor:
        """Zero-shot class embeddings (N, D), float32: each class name put in every template
        (format strings with ``{}``, or callables), embedded, averaged and re-normalised, as
        open_clip's ``build_zero_shot_classifier`` does, for either kind of CLIP."""
        import torch

        per_batch = max(1, 2048 // len(templates))
        rows = []
        for start in range(0, len(class_names), per_batch):
            names = class_names[start:start + per_batch]
            texts = [t.format(name) if isinstance(t, str) else t(name) for name in names for t in templates]
            embedded = self.encode_texts(texts).view(len(names), len(templates), -1)  # (n, T, D)
            rows.append(torch.nn.functional.normalize(embedded.mean(dim=1), dim=-1))
        return torch.cat(rows)


def _pooled(output: Any) -> torch.Tensor:
    """``get_*_features``' projected embeddings: a tensor (transformers 4) or an output's
    ``pooler_output`` (transformers 5)."""
    return output if hasattr(output, "dim") else output.pooler_output


class _TensorResizeCrop:
    """A ``CLIPImageProcessor``'s geometry on batched tensors: resize the short side (bicubic,
    antialiased), then centre crop; a step the processor switches off is skipped."""

    def __init__(self, processor: Any) -> None:
        size = processor.size if processor.do_resize else None
        self.short_side = None if size is None else size.get("shortest_edge")
        if size is not None and self.short_side is None:  # {"height", "width"}: a fixed size
            self.fixed = (int(size["height"]), int(size["width"]))
        else:
            self.fixed = None
        crop = processor.crop_size if processor.do_center_crop else None
        self.crop = None if crop is None else (int(crop["height"]), int(crop["width"]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        height, width = x.shape[-2:]
        target = self.fixed
        if self.short_side is not None:
            scale = self.short_side / min(height, width)
            target = (round(height * scale), round(width * scale))
        if target is not None and tuple(target) != (height, width):
            x = F.interpolate(x, size=target, mode="bicubic", align_corners=False, antialias=True)
        if self.crop is not None:
            height, width = x.shape[-2:]
            top, left = max(0, (height - self.crop[0]) // 2), max(0, (width - self.crop[1]) // 2)
            x = x[..., top:top + self.crop[0], left:left + self.crop[1]]
        return x


class _TensorNormalize:
    """A ``CLIPImageProcessor``'s normalisation ((x - mean) / std per channel) on tensors."""

    def __init__(self, processor: Any) -> None:
        self.mean = list(processor.image_mean) if processor.do_normalize else None
        self.std = list(processor.image_std) if processor.do_normalize else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        mean = x.new_tensor(self.mean).view(1, -1, 1, 1)
        std = x.new_tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std


def cache_key(
    architecture: str, pretrained: str | None, device: str | None, dtype: str | None
) -> tuple[str, str, str, str]:
    """What makes two verifiers' CLIPs the same model; local files and folders compare by
    absolute path."""
    device = resolve_device(device)
    folder = transformers_path(architecture)
    if folder is not None:  # its weights are in the folder: no pretrained tag or file
        if pretrained not in (None, "", DEFAULT_PRETRAINED):
            raise ValueError(
                f"{architecture!r} is a transformers CLIPModel whose weights are in its folder; "
                f"pretrained {pretrained!r} does not apply (leave it unset)"
            )
        pretrained = None
        if os.path.isdir(folder):
            architecture = os.path.abspath(folder)
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
        ``hf-hub:`` / ``local-dir:`` model name; or a transformers ``CLIPModel`` folder
        (``save_pretrained``) or ``transformers:<hub id or folder>``.
    :param pretrained: an open_clip pretrained tag (``"openai"``), a local checkpoint file, or
        ``None`` for random weights. A transformers CLIP's weights are in its folder: unset (the
        default tag is ignored for it).
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
