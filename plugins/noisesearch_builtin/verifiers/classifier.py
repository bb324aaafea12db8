"""``classifier``: log-probability of the requested class under any transformers image classifier.

The classifier verifier of Ma et al. 2025 (section 3.1, "class-conditional verifiers"): a
supervised classifier scores how clearly a sample shows the class it was conditioned on. Any
Hugging Face image-classification model works (``AutoModelForImageClassification``), preprocessed
by its own ``AutoImageProcessor`` configuration: the same resize, crop and normalisation as the
library applies, run on tensors, batched, on the verifier's device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition, hookimpl
from noisesearch.devices import resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

    from noisesearch.registry import Register

#: A run label -> model class map: a list indexed by run label, or a mapping keyed by run label
#: (an int, or its decimal string as JSON gives it); each value is a class index or a class name.
LabelMap = Sequence[int | str] | Mapping[int | str, int | str]

def pixel_values(processor: Any, images: torch.Tensor, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Run a transformers image processor (torchvision backend) on images in ``[0, 1]``.

    The processor was written for 8-bit images: it rescales by ``rescale_factor`` (1/255) and then
    normalises. Resizing is linear, so handing it the already-rescaled values with
    ``do_rescale=False`` is the same computation without a round trip through 0..255, and keeps
    the whole batch on ``device``.
    """
    import torch

    x = images.to(device=device, dtype=torch.float32)  # (B, 3, H, W), a copy: never modified in place
    options: dict[str, Any] = {"return_tensors": "pt"}
    if getattr(processor, "do_rescale", False):
        x = x * (255.0 * float(processor.rescale_factor))
        options["do_rescale"] = False
    else:  # the model expects raw 0..255 values
        x = x * 255.0
    out = processor(images=x, **options)["pixel_values"]  # (B, 3, h, w)
    return out.to(device=device, dtype=dtype)


def class_index(names: Mapping[int, str], wanted: int | str, model: str) -> int:
    """A class of ``model`` by index, or by name (case-insensitive; any comma-separated synonym
    of an ImageNet-style name such as ``"tench, Tinca tinca"`` matches)."""
    if isinstance(wanted, bool):
        raise ValueError(f"label_map: expected a class index or name of {model!r}, got {wanted!r}")
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.strip().isdigit()):
        index = int(wanted)
        if not 0 <= index < len(names):
            raise ValueError(f"class index {index} is outside the {len(names)} classes of {model!r}")
        return index
    key = str(wanted).strip().lower()
    spellings = {
        i: {name.lower(), *(part.strip().lower() for part in name.split(","))} for i, name in names.items()
    }
    hits = sorted(i for i, spelt in spellings.items() if key in spelt)
    if len(hits) == 1:
        return hits[0]
    if hits:
        shown = ", ".join(f"{i}: {names[i]!r}" for i in hits[:5])
        raise ValueError(f"class name {wanted!r} is ambiguous in {model!r} ({shown}); give the index")
    import difflib

    known = sorted({spelling for spelt in spellings.values() for spelling in spelt})
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"{wanted!r} is not a class name of {model!r}.{hint}")


def resolve_label_map(label_map: LabelMap | None, names: Mapping[int, str], model: str) -> dict[int, int]:
    """``label_map`` as {run label: model class index}, checked against the model's classes."""
    if label_map is None:
        return {}
    if isinstance(label_map, Mapping):
        items = list(label_map.items())
    elif isinstance(label_map, Sequence) and not isinstance(label_map, str):
        items = list(enumerate(label_map))
    else:
        raise ValueError(
            f"label_map must be a list (indexed by run label) or a mapping run label -> class, "
            f"got {type(label_map).__name__}"
        )
    resolved = {}
    for run_label, wanted in items:
        if isinstance(run_label, str) and not run_label.strip().isdigit():
            raise ValueError(f"label_map keys are run label indices, got {run_label!r}")
        resolved[int(run_label)] = class_index(names, wanted, model)
    return resolved


class ImageClassifierVerifier:
    """Log-probability of the requested class under any transformers image classifier.

    The run's label is taken as the model's class index unless ``label_map`` says otherwise, for
    models whose classes differ from the run's labels (a digit classifier with classes "zero"..
    "nine", an ImageNet model judging a 10-class run).

    :param model: Hugging Face model id or local folder of an image-classification model
        (``AutoModelForImageClassification``); its ``preprocessor_config.json`` gives the resize,
        crop and normalisation. Loaded with ``from_pretrained`` (hub cache and HF_HUB_OFFLINE apply).
    :param label_map: which of the model's classes each run label means: a list indexed by run
        label, or a mapping run label -> class; a class is an index or a name from the model's
        ``id2label`` (case-insensitive). On the command line give JSON, e.g.
        ``--verifier-opt 'classifier.label_map=["zero","one","two"]'``. Default: run label = class index.
    :param device: torch device; default: CUDA if available, else CPU.
    :param dtype: float32, float16 or bfloat16; default: float16 on CUDA, float32 on CPU.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"label"})

    def __init__(
        self,
        model: str = "google/vit-base-patch16-224",
        label_map: list[int | str] | dict[str, int | str] | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        from transformers import AutoConfig

        self.name = str(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        config = AutoConfig.from_pretrained(self.name)
        self.check_config(config)
        # Resolve names before loading weights: a typo fails in a second, not after a download.
        self.class_names = {int(i): str(n) for i, n in sorted(config.id2label.items())}
        self.label_map = resolve_label_map(label_map, self.class_names, self.name)
        self.model, self.processor = self.load(config)

    def check_config(self, config: Any) -> None:
        """Refuse a configuration this verifier cannot use (subclasses narrow the family)."""

    def load(self, config: Any) -> tuple[Any, Any]:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        processor = AutoImageProcessor.from_pretrained(self.name, backend="torchvision")
        network = AutoModelForImageClassification.from_pretrained(self.name, config=config, dtype=self.dtype)
        return network.to(self.device).eval(), processor

    def model_class(self, label: int) -> int:
        """The model's class index for a run label."""
        if self.label_map:
            if label not in self.label_map:
                raise ValueError(
                    f"run label {label} is not in label_map of verifier model {self.name!r} "
                    f"(maps {sorted(self.label_map)})"
                )
            return self.label_map[label]
        if not 0 <= label < len(self.class_names):
            raise ValueError(
                f"run label {label} is outside the {len(self.class_names)} classes of {self.name!r}; "
                f"give label_map to say which class each run label means"
            )
        return label

    def log_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(B, num_classes)`` for images ``(B, 3, H, W)`` in ``[0, 1]``."""
        import torch

        with torch.inference_mode():
            inputs = pixel_values(self.processor, images, self.device, self.dtype)
            logits = self.model(pixel_values=inputs).logits  # (B, num_classes)
            return logits.float().log_softmax(dim=-1)

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, Any] | None = None,
    ) -> torch.Tensor:
        if condition.label is None:
            raise ValueError(f"verifier model {self.name!r} scores a class label; the condition has none")
        return self.log_probs(images)[:, self.model_class(int(condition.label))]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The most likely run label of each image ``(B,)``: among the mapped classes when
        ``label_map`` is given (the evaluator's verdict), else among all classes."""
        return self._predicted(self.log_probs(images))

    def score_and_predict(
        self, images: torch.Tensor, condition: Condition
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``score`` and ``predict`` from one forward pass, (B,) each: as the held-out evaluator,
        the run's verdicts then cost no second call."""
        if condition.label is None:
            raise ValueError(f"verifier model {self.name!r} scores a class label; the condition has none")
        log_probs = self.log_probs(images)
        return log_probs[:, self.model_class(int(condition.label))], self._predicted(log_probs)

    def _predicted(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Run labels ``(B,)`` from log-probabilities ``(B, num_classes)`` (see :meth:`predict`)."""
        import torch

        if not self.label_map:
            return log_probs.argmax(dim=1)
        run_labels = sorted(self.label_map)
        classes = torch.tensor([self.label_map[r] for r in run_labels], device=log_probs.device)
        best = log_probs[:, classes].argmax(dim=1)
        return torch.tensor(run_labels, device=log_probs.device)[best]


@hookimpl
def register_verifiers(register: Register) -> None:
    register("classifier", ImageClassifierVerifier)
