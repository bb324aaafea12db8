"""CLIPScore: how well an image matches its prompt under CLIP (Hessel et al. 2021).

One of the paper's text-to-image verifiers (Ma et al. 2025). The score is the
cosine similarity of the L2-normalised image and prompt embeddings; the prompt is encoded once
per prompt and cached, so a search pays only for the image tower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition, hookimpl
from noisesearch_builtin.shapes import CLIP_DIR
from noisesearch_builtin.verifiers.clip_backbone import DEFAULT_ARCHITECTURE, DEFAULT_PRETRAINED

if TYPE_CHECKING:
    import torch

    from noisesearch.registry import Register

#: ``cosine``: the raw cosine in [-1, 1]; ``clipscore``: ``2.5 * max(cos, 0)``, the scale
#: CLIPScore is usually reported on (Hessel et al. 2021; the paper's 0.71 -> 0.77).
SCALES = ("cosine", "clipscore")
CLIPSCORE_WEIGHT = 2.5


class ClipScore:
    """Cosine similarity of CLIP image and prompt embeddings (CLIPScore); needs a prompt.

    :param model: open_clip architecture; the default ViT-L-14 is the CLIP of the paper's
        text-to-image verifiers and of the LAION aesthetic predictor, so both share one model.
        Or a transformers ``CLIPModel`` folder (``save_pretrained``), or
        ``transformers:<hub id or folder>`` (e.g. ``transformers:openai/clip-vit-large-patch14``).
    :param pretrained: open_clip pretrained tag (``openai``, ``laion2b_s32b_b82k``, ...) or a
        local checkpoint file (safetensors, or a state dict loaded with ``weights_only=True``);
        ignored for a transformers CLIP, whose folder holds its weights.
    :param scale: ``cosine`` (raw cosine in [-1, 1], best for searching: no ties at 0) or
        ``clipscore`` (``2.5 * max(cos, 0)``, the usual reporting scale).
    :param device: torch device; default: CUDA if available, else the CPU.
    :param dtype: float32, float16 or bfloat16; default: float16 on CUDA, float32 on the CPU.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"prompt"})
    #: The score is differentiable in the image (``score_with_grad``: the ``gradient`` strategy).
    differentiable: ClassVar[bool] = True

    def __init__(
        self,
        model: str = DEFAULT_ARCHITECTURE,
        pretrained: str | None = DEFAULT_PRETRAINED,
        scale: str = "cosine",
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        from noisesearch_builtin.verifiers.clip_backbone import load_clip

        if scale not in SCALES:
            raise ValueError(f"clip-score: scale {scale!r} is not one of {', '.join(SCALES)}")
        self.scale = scale
        self.backbone = load_clip(model, pretrained, device, dtype)
        self._prompts: dict[str, torch.Tensor] = {}  # prompt -> (D,) normalised embedding

    def prompt_embedding(self, prompt: str) -> torch.Tensor:
        """The normalised embedding (D,) of ``prompt``, computed once."""
        if prompt not in self._prompts:
            self._prompts[prompt] = self.backbone.encode_texts([prompt])[0]
        return self._prompts[prompt]

    def cosine(self, images: torch.Tensor, prompt: str, grad: bool = False) -> torch.Tensor:
        """Raw cosine similarity (B,) of each image with ``prompt``; with ``grad``, differentiable
        in the images (the cached prompt embedding is an inference tensor: a copy enters the graph)."""
        text = self.prompt_embedding(prompt)
        return self.backbone.encode_images(images, grad=grad) @ (text.clone() if grad else text)

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, Any] | None = None,
    ) -> torch.Tensor:
        return self._score(images, condition, grad=False)

    def score_with_grad(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        """``score`` with its autograd graph kept (B,)."""
        return self._score(images, condition, grad=True)

    def _score(self, images: torch.Tensor, condition: Condition, grad: bool) -> torch.Tensor:
        if condition.prompt is None:
            raise ValueError("clip-score needs a prompt; the condition has none")
        cosine = self.cosine(images, condition.prompt, grad=grad)
        if self.scale == "clipscore":
            return CLIPSCORE_WEIGHT * cosine.clamp(min=0.0)
        return cosine


class ShapesClip(ClipScore):
    """CLIPScore under the embedded shapes CLIP (trained on the shapes world); needs a prompt.

    A transformers ``CLIPModel`` trained contrastively on the world's images and captions and
    shipped in the package, scored by ``clip-score``'s code. The ``shapes`` model's default
    verifier: cheap, and hackable, which is why ``shapes-judge`` judges the reports.

    :param model: the CLIP folder; default: the shipped one.
    :param scale: ``cosine`` or ``clipscore`` (see ``clip-score``).
    :param device: torch device; default: CUDA if available, else the CPU.
    :param dtype: float32, float16 or bfloat16; default: float16 on CUDA, float32 on the CPU.
    """

    def __init__(
        self,
        model: str = str(CLIP_DIR),
        scale: str = "cosine",
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        super().__init__(model=model, pretrained=None, scale=scale, device=device, dtype=dtype)


@hookimpl
def register_verifiers(register: Register) -> None:
    register("clip-score", ClipScore)
    register("shapes-clip", ShapesClip)
