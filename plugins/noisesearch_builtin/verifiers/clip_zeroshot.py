"""CLIP zero-shot classifier: the logit of the requested class (Ma et al. 2025).

A class is represented, as in CLIP's ImageNet evaluation (Radford et al. 2021), by the mean of
the normalised text embeddings of its name in every prompt template ("a photo of a {}.", ...),
renormalised. open_clip ships both the 1,000 ImageNet class names and OpenAI's 80 templates.
The logit is ``logit_scale * cos(image, class)`` (``logit_scale`` = 100 for OpenAI's CLIP).
Class embeddings are computed once per class, when first asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition, hookimpl
from noisesearch_builtin.verifiers.clip_backbone import DEFAULT_ARCHITECTURE, DEFAULT_PRETRAINED

if TYPE_CHECKING:
    import torch

    from noisesearch.registry import Register

TEMPLATE_SETS = ("openai", "simple")
OUTPUTS = ("logit", "log_prob")


class ClipZeroShot:
    """Logit of the requested class under CLIP zero-shot classification (ImageNet names); needs a label.

    :param model: open_clip architecture (default ViT-L-14, shared with clip-score and aesthetic).
    :param pretrained: open_clip pretrained tag or a local checkpoint file.
    :param class_names: one name per label index; default: open_clip's 1,000 ImageNet class
        names (label 0 = "tench").
    :param templates: ``openai`` (CLIP's 80 ImageNet prompt templates) or ``simple`` (2), or a
        list of format strings with one ``{}``.
    :param output: ``logit`` (the paper's choice; computes only the requested class) or
        ``log_prob`` (log-softmax over every class: also penalises looking like other classes;
        encodes every class once, 80,000 prompts for ImageNet).
    :param device: torch device; default: CUDA if available, else the CPU.
    :param dtype: float32, float16 or bfloat16; default: float16 on CUDA, float32 on the CPU.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"label"})

    def __init__(
        self,
        model: str = DEFAULT_ARCHITECTURE,
        pretrained: str | None = DEFAULT_PRETRAINED,
        class_names: Sequence[str] | None = None,
        templates: str | Sequence[str] = "openai",
        output: str = "logit",
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        import open_clip

        from noisesearch_builtin.verifiers.clip_backbone import load_clip

        if output not in OUTPUTS:
            raise ValueError(f"clip-zeroshot: output {output!r} is not one of {', '.join(OUTPUTS)}")
        if isinstance(templates, str):
            if templates not in TEMPLATE_SETS:
                raise ValueError(
                    f"clip-zeroshot: templates {templates!r} is not one of {', '.join(TEMPLATE_SETS)} "
                    "or a list of format strings"
                )
            templates = {
                "openai": open_clip.OPENAI_IMAGENET_TEMPLATES,
                "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES,
            }[templates]
        elif not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
            raise ValueError(
                f"clip-zeroshot: templates must be format strings with '{{}}', got {templates!r}"
            )
        self.templates = tuple(templates)
        self.class_names = tuple(class_names) if class_names is not None else open_clip.IMAGENET_CLASSNAMES
        if not self.class_names:
            raise ValueError("clip-zeroshot: class_names is empty")
        self.output = output
        self.backbone = load_clip(model, pretrained, device, dtype)
        self._classes: dict[int, torch.Tensor] = {}  # label -> (D,) normalised class embedding

    def class_embeddings(self, labels: Sequence[int]) -> torch.Tensor:
        """Normalised class embeddings (len(labels), D), each computed once."""
        import torch

        missing = [label for label in dict.fromkeys(labels) if label not in self._classes]
        if missing:
            weights = self.backbone.encode_classes(  # (len(missing), D)
                [self.class_names[label] for label in missing], self.templates
            )
            for label, row in zip(missing, weights):
                self._classes[label] = row
        return torch.stack([self._classes[label] for label in labels])

    def logits(self, images: torch.Tensor, labels: Sequence[int] | None = None) -> torch.Tensor:
        """Zero-shot logits (B, len(labels)); all classes when ``labels`` is None."""
        labels = range(len(self.class_names)) if labels is None else labels
        image = self.backbone.encode_images(images)  # (B, D)
        return self.backbone.logit_scale() * image @ self.class_embeddings(list(labels)).T

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The most likely class of each image (B,), over every class name."""
        return self.logits(images).argmax(dim=1)

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, Any] | None = None,
    ) -> torch.Tensor:
        if condition.label is None:
            raise ValueError("clip-zeroshot needs a class label; the condition has none")
        label = int(condition.label)
        if not 0 <= label < len(self.class_names):
            raise ValueError(
                f"clip-zeroshot: label {label} is outside its {len(self.class_names)} class names "
                "(pass class_names for this model's labels)"
            )
        if self.output == "log_prob":
            return self.logits(images).log_softmax(dim=1)[:, label]
        return self.logits(images, [label])[:, 0]


@hookimpl
def register_verifiers(register: Register) -> None:
    register("clip-zeroshot", ClipZeroShot)
