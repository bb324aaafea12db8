"""A local vision-language model as rubric judge, through transformers' own classes.

``AutoProcessor`` and ``AutoModelForImageTextToText`` load any hub id or folder whose
``config.json`` names a model of that auto class: tested with Qwen2-VL, Qwen2.5-VL, Idefics3
(the architecture of SmolVLM's first release) and SmolVLM (tiny models built from configs). The
question goes through the processor's own chat template; generation is greedy and batched
(left padding), and by default constrained to the grammar of a score (:class:`ScoreOnly`), so
that every reply is one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisesearch.errors import ConfigError
from noisesearch.weights import Source, locate

from noisesearch_vlm.judging import Judge, Reply, conversation, in_chunks
from noisesearch_vlm.rubric import HIGHEST, LOWEST, check_metric

if TYPE_CHECKING:
    import torch
    from PIL import Image

MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
#: The classes the judge is tested or written for (any other class of transformers'
#: ``AutoModelForImageTextToText`` with a chat template may work too).
SUPPORTED = (
    "Qwen2VLForConditionalGeneration (Qwen2-VL)",
    "Qwen2_5_VLForConditionalGeneration (Qwen2.5-VL)",
    "Idefics3ForConditionalGeneration (Idefics3, SmolVLM's first release)",
    "SmolVLMForConditionalGeneration (SmolVLM)",
)


#: What a constrained reply may spell.
SCORES = frozenset(str(n) for n in range(LOWEST, HIGHEST + 1))


class NotAVisionLanguageModel(ValueError):
    """A model id or folder that transformers' ``AutoModelForImageTextToText`` cannot load."""

    def __init__(self, model: str, what: str) -> None:
        super().__init__(
            f"{model!r} {what}, not a vision-language model of transformers' "
            f"AutoModelForImageTextToText; the judge supports {', '.join(SUPPORTED)}"
        )


def vision_language_model_types() -> frozenset[str]:
    """``model_type`` values that ``AutoModelForImageTextToText`` maps to a class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return frozenset(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def check_folder(model: str) -> None:
    """Refuse a local folder that holds no vision-language model, reading its ``config.json``
    only (hub ids are checked when they load)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return
    config = folder / "config.json"
    if not config.is_file():
        raise NotAVisionLanguageModel(model, "is a folder without a transformers config.json")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise NotAVisionLanguageModel(model, "has a config.json that is not a JSON object") from None
    if model_type not in vision_language_model_types():
        raise NotAVisionLanguageModel(model, f"holds a {model_type!r} model")


def model_source(model: str) -> Source:
    """Where ``model`` loads from, refused with a :class:`ConfigError` of ``vlm.model`` when it
    cannot: a path that does not exist, a hub id not in the hub cache while the hub cannot be
    used (``noisesearch.weights``)."""
    return locate("vlm.model", model, ["config.json"], "")


class ScoreOnly:
    """A logits processor for ``generate`` that lets the judge write a score and nothing else.

    The reply must match ``\\s*(10|[0-9])`` (the grammar :func:`~noisesearch_vlm.rubric.parse_score`
    reads): first a token spelling 0 to 10 (leading white space allowed), then ``0`` only after
    ``1``, then the end of the reply; the end is refused before a digit. So with
    ``max_new_tokens >= 3`` every reply is a score. ``start``: the prompt's length in tokens
    (the reply follows it in ``input_ids``), set before each ``generate``.
    """

    def __init__(self, tokenizer: Any, stop_ids: Sequence[int]) -> None:
        spelled = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.first = [i for i, text in enumerate(spelled)
                      if text.lstrip() in SCORES and text == text.rstrip()]
        self.zero = [i for i, text in enumerate(spelled) if text == "0"]
        if not self.first:
            raise ValueError(
                "the tokenizer has no token that spells a score from 0 to 10: use constrain=False"
            )
        self.spelled = {i: spelled[i] for i in self.first}
        self.stop_ids = list(stop_ids)
        self.start = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        mask = torch.full_like(scores, float("-inf"))  # (B, V)
        for row, ids in enumerate(input_ids[:, self.start:].tolist()):
            reply = "".join(self.spelled.get(i, "\0") for i in ids if i not in self.stop_ids).strip()
            if not ids:
                allowed = self.first
            elif reply == "1":
                allowed = [*self.zero, *self.stop_ids]
            else:  # a whole score (or a finished row, padded): only the end
                allowed = self.stop_ids
            mask[row, [i for i in allowed if i < scores.shape[-1]]] = 0.0
        return scores + mask


class VLMJudge(Judge):
    """A vision-language model judges each image by a rubric criterion: a score from 0 to 10.

    The rubric follows the paper's grader (accuracy to the prompt, creativity, visual quality,
    consistency, thematic resonance, overall). A reply that is not exactly a score is asked
    again once, then scores NaN and counts as a failure; tokens in and out are added to the
    run's ``usage.verifier_cost``.

    :param model: hub id or folder of a vision-language model that transformers'
        ``AutoModelForImageTextToText`` loads (Qwen2-VL, Qwen2.5-VL, SmolVLM, Idefics3), with its
        processor and chat template in the same place.
    :param metric: the rubric criterion: accuracy, creativity, quality, consistency,
        resonance or overall.
    :param constrain: let the model write only a score from 0 to 10 (the tokens of one, then
        the end of the reply); ``False`` lets it write anything, read as strictly.
    :param max_new_tokens: the most tokens a reply may have.
    :param batch_size: images per ``generate`` call.
    :param device: torch device; default: CUDA if available, else CPU.
    :param dtype: model dtype: float32, float16 or bfloat16; default: bfloat16 on CUDA
        (these models are trained in it), float32 on CPU.
    """

    def __init__(
        self,
        model: str = MODEL,
        metric: str = "overall",
        constrain: bool = True,
        max_new_tokens: int = 4,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        super().__init__(metric)
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_new_tokens and batch_size must be at least 1, got "
                             f"{max_new_tokens} and {batch_size}")
        if constrain and max_new_tokens < 3:  # "1", "0", then the end: else 10 reads as 1
            raise ValueError(f"max_new_tokens must be at least 3 with constrain=True, got {max_new_tokens}")
        import torch
        from noisesearch.devices import resolve_device, resolve_dtype
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, GenerationConfig

        check_folder(model)
        source = model_source(model)
        with source.loading():
            config = AutoConfig.from_pretrained(source.load_from, **source.hub_kwargs())
        if config.model_type not in vision_language_model_types():
            raise NotAVisionLanguageModel(model, f"holds a {config.model_type!r} model")
        self.device = resolve_device(device)
        if dtype is None and self.device.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            with source.loading():
                self.processor = AutoProcessor.from_pretrained(source.load_from, **source.hub_kwargs())
        except ImportError as exc:  # SmolVLM's processor spells numbers with num2words
            raise ValueError(f"the processor of {model!r} needs a package that is not installed ({exc}); "
                             f"SmolVLM's: pip install 'noisesearch-vlm[smolvlm]'") from None
        if not getattr(self.processor, "chat_template", None):
            raise ValueError(f"the processor of {model!r} has no chat template to put the question in")
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched generation continues every row at the end
        with source.loading():
            self.model = AutoModelForImageTextToText.from_pretrained(
                source.load_from, dtype=self.dtype, **source.hub_kwargs(model=True)
            )
        self.model.to(self.device).eval()
        saved = self.model.generation_config
        stop = saved.eos_token_id if saved.eos_token_id is not None else self.tokenizer.eos_token_id
        self.stop_ids = [stop] if isinstance(stop, int) else list(stop or [])
        if not self.stop_ids:
            raise ValueError(f"{model!r} names no end-of-reply token (eos_token_id)")
        pad = saved.pad_token_id if saved.pad_token_id is not None else self.tokenizer.pad_token_id
        pad = self.stop_ids[0] if pad is None else pad
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = pad
        # Greedy, whatever sampling the checkpoint's generation_config.json suggests.
        self.generation = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.stop_ids, pad_token_id=pad
        )
        self.constraint = ScoreOnly(self.tokenizer, self.stop_ids) if constrain else None
        self.batch_size = batch_size

    @classmethod
    def describe(cls, model: str = MODEL, metric: str = "overall", **options: Any) -> dict[str, Any]:
        """Checked while planning, before anything loads: the metric, a local folder's
        ``config.json``, a path that does not exist, a hub id not in the hub cache while the hub
        cannot be used."""
        try:
            check_metric(metric)
            check_folder(model)
        except ValueError as exc:
            raise ConfigError("verifier vlm", str(exc)) from None
        model_source(model)
        return {"requires": cls.requires}

    def ask(
        self, images: Sequence[Image.Image], question: str, previous: Sequence[str | None] | None
    ) -> list[Reply]:
        return in_chunks(len(images), self.batch_size, lambda lo, hi: self._generate(
            images[lo:hi], question, None if previous is None else previous[lo:hi]))

    def _generate(
        self, images: Sequence[Image.Image], question: str, previous: Sequence[str | None] | None
    ) -> list[Reply]:
        import torch
        from transformers import LogitsProcessorList

        texts = [
            self.processor.apply_chat_template(
                conversation(question, None if previous is None else previous[i], {"type": "image"}),
                add_generation_prompt=True, tokenize=False,
            )
            for i in range(len(images))
        ]
        inputs = self.processor(text=texts, images=[[image] for image in images], padding=True,
                                return_tensors="pt").to(self.device, dtype=self.dtype)
        processors = LogitsProcessorList()
        if self.constraint is not None:
            self.constraint.start = inputs["input_ids"].shape[1]
            processors.append(self.constraint)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, generation_config=self.generation, logits_processor=processors
            )
        self._cost["requests"] += 1
        new = out[:, inputs["input_ids"].shape[1]:].cpu()  # (B, T) after the prompt
        stops = torch.isin(new, torch.tensor(self.stop_ids))
        # A reply's tokens: up to and with its first end-of-reply token (the rest is padding).
        lengths = torch.where(stops.any(1), stops.int().argmax(1) + 1, new.shape[1])
        tokens_in = inputs["attention_mask"].sum(1).tolist()  # prompt and image tokens, no padding
        replies = self.processor.batch_decode(new, skip_special_tokens=True)
        return [Reply(text, int(n_in), int(n_out))
                for text, n_in, n_out in zip(replies, tokens_in, lengths.tolist())]
