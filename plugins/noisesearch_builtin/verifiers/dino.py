"""``dino``: DINOv2 with its linear ImageNet head, the "DINO-LinearHead" verifier of Ma et al. 2025.

Section 3.1 of the paper scores class-conditional ImageNet samples by the logits of the
conditioning class under DINOv2 with the linear classification head its authors trained on frozen
features. Here that is transformers' ``Dinov2ForImageClassification`` (the head reads the class
token concatenated with the mean patch token), scored as the log-probability of the class: the
softmax keeps scores comparable across images, and ranking one image's candidates is unchanged
whenever the other classes' logits move little.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from noisesearch import hookimpl
from noisesearch_builtin.verifiers.classifier import ImageClassifierVerifier

if TYPE_CHECKING:
    from noisesearch.registry import Register


class DinoVerifier(ImageClassifierVerifier):
    """Log-probability of the requested ImageNet class under DINOv2 with its linear head.

    The run's label is the ImageNet-1k class index (as for DiT), unless ``label_map`` says otherwise.

    :param model: Hugging Face id or local folder of a ``Dinov2ForImageClassification`` model;
        the default is the ViT-S/14 backbone with its one-layer linear ImageNet head. Also
        ``facebook/dinov2-{base,large,giant}-imagenet1k-1-layer``.
    :param label_map: which ImageNet class each run label means: a list indexed by run label, or a
        mapping run label -> class; a class is an index or a name from ``id2label``
        (``"goldfish"`` matches ``"goldfish, Carassius auratus"``). Default: run label = class index.
    :param device: torch device; default: CUDA if available, else CPU.
    :param dtype: float32, float16 or bfloat16; default: float16 on CUDA, float32 on CPU.
    """

    def __init__(
        self,
        model: str = "facebook/dinov2-small-imagenet1k-1-layer",
        label_map: list[int | str] | dict[str, int | str] | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        super().__init__(model=model, label_map=label_map, device=device, dtype=dtype)

    def check_config(self, config: Any) -> None:
        architectures = list(getattr(config, "architectures", None) or [])
        if config.model_type != "dinov2" or (
            architectures and "Dinov2ForImageClassification" not in architectures
        ):
            raise ValueError(
                f"verifier dino needs a DINOv2 model with its classification head "
                f"(Dinov2ForImageClassification); {self.name!r} is {config.model_type!r} "
                f"{architectures or ''}. Use the verifier `classifier` for other image classifiers."
            )


@hookimpl
def register_verifiers(register: Register) -> None:
    register("dino", DinoVerifier)
