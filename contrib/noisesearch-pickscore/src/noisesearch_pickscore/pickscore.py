"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"): a CLIP-H fine-tuned on human preferences.

The score is the one of PickScore's README: ``logit_scale.exp() * cos(image embedding, prompt
embedding)`` from transformers' ``CLIPModel`` (``yuvalkirstain/PickScore_v1``), with the image
preprocessing and tokenizer of the processor it was trained with
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``: bicubic resize of the short side to 224, centre crop,
CLIP mean/std; prompts truncated to 77 tokens). The images are preprocessed by that processor's own
torchvision backend, on tensors, batched, on the verifier's device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition
from noisesearch.weights import TOKENIZER_FILES, Source, check_all

if TYPE_CHECKING:
    import torch

MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MAX_TEXT_TOKENS = 77


def pixel_values(processor: Any, images: torch.Tensor, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Run a transformers image processor (torchvision backend) on images in ``[0, 1]``.

    The processor expects 8-bit images, which it rescales by ``rescale_factor`` (1/255) before
    normalising; resizing is linear, so giving it the rescaled values with ``do_rescale=False`` is
    the same computation without a round trip through 0..255.
    """
    import torch

    x = images.to(device=device, dtype=torch.float32)  # (B, 3, H, W), a copy
    options: dict[str, Any] = {"return_tensors": "pt"}
    if getattr(processor, "do_rescale", False):
        x = x * (255.0 * float(processor.rescale_factor))
        options["do_rescale"] = False
    else:
        x = x * 255.0
    return processor(images=x, **options)["pixel_values"].to(device=device, dtype=dtype)  # (B, 3, h, w)


def sources(model: str = MODEL, processor: str = PROCESSOR) -> tuple[Source, Source]:
    """Where the model and the processor load from, without loading them: a
    :class:`~noisesearch.errors.ConfigError` naming every option (``pickscore.model``,
    ``pickscore.processor``) that names something missing (``noisesearch.weights``).
    The processor's repository also holds CLIP-H's weights: only its small files are needed."""
    found = check_all(
        ("pickscore.model", model, ["config.json"], ""),
        ("pickscore.processor", processor, [("preprocessor_config.json", "processor_config.json"),
                                            TOKENIZER_FILES], "--include '*.json' --include '*.txt'"),
    )
    return found[0], found[1]


def _embedding(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose pooler is it (5)."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PickScoreVerifier:
    """PickScore: how much people would prefer the image for the prompt (CLIP-H, Pick-a-Pic).

    Scores are ``logit_scale.exp() * cosine`` (published comparisons report about 20-23; higher is
    better),
    the logits PickScore's README turns into preferences with a softmax over candidates.

    :param model: Hugging Face id or folder of the PickScore ``CLIPModel``.
    :param processor: Hugging Face id or folder of the processor (tokenizer and image processor)
        PickScore was trained with.
    :param device: torch device; default: CUDA if available, else CPU.
    :param dtype: model dtype: float32, float16 or bfloat16; default: float16 on CUDA, float32 on CPU.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"prompt"})
    #: The score is differentiable in the image (``score_with_grad``: the ``gradient`` strategy).
    differentiable: ClassVar[bool] = True

    def __init__(
        self,
        model: str = MODEL,
        processor: str = PROCESSOR,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        from noisesearch.devices import resolve_device, resolve_dtype
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        model_source, processor_source = sources(model, processor)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        with model_source.loading():
            self.model = AutoModel.from_pretrained(
                model_source.load_from, dtype=self.dtype, **model_source.hub_kwargs(model=True)
            )
        self.model.to(self.device).eval()
        self.model.requires_grad_(False)  # never trained here: no weight gradients
        if not hasattr(self.model, "get_image_features") or not hasattr(self.model, "logit_scale"):
            raise ValueError(f"PickScore needs a CLIP model; {model!r} is {type(self.model).__name__}")
        hub = processor_source.hub_kwargs()
        with processor_source.loading():
            self.tokenizer = AutoTokenizer.from_pretrained(processor_source.load_from, **hub)
            self.image_processor = AutoImageProcessor.from_pretrained(
                processor_source.load_from, backend="torchvision", **hub
            )
        self._text: tuple[str, torch.Tensor] | None = None

    @classmethod
    def describe(cls, model: str = MODEL, processor: str = PROCESSOR, **options: Any) -> dict[str, Any]:
        """Checked while planning, before anything loads: the model and the processor are there
        (a local folder, or a hub id cached or reachable)."""
        sources(model, processor)
        return {"requires": cls.requires}

    def text_embedding(self, prompt: str) -> torch.Tensor:
        """The unit-norm prompt embedding ``(D,)``, cached for the run's prompt."""
        import torch

        if self._text is None or self._text[0] != prompt:
            tokens = self.tokenizer(
                prompt, padding=True, truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                text = _embedding(self.model.get_text_features(**tokens))[0].float()  # (D,)
            self._text = (prompt, text / text.norm())
        return self._text[1]

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, Any] | None = None,
    ) -> torch.Tensor:
        return self._score(images, condition, grad=False)

    def score_with_grad(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        """``score`` with its autograd graph kept (B,): the processor's torchvision ops
        (resize, crop, normalise) are differentiable on tensors."""
        return self._score(images, condition, grad=True)

    def _score(self, images: torch.Tensor, condition: Condition, grad: bool) -> torch.Tensor:
        import torch

        if condition.prompt is None:
            raise ValueError("PickScore scores an image against a prompt; the condition has none")
        text = self.text_embedding(condition.prompt)  # an inference tensor: a copy enters a graph
        with torch.inference_mode(not grad):
            pixels = pixel_values(self.image_processor, images, self.device, self.dtype)
            image = _embedding(self.model.get_image_features(pixel_values=pixels)).float()  # (B, D)
            image = image / image.norm(dim=-1, keepdim=True)
            scale = self.model.logit_scale.exp().float()
            return scale * (image @ (text.clone() if grad else text))  # (B,)
