"""ImageReward (Xu et al. 2023) rebuilt on transformers' BLIP classes, loading the official checkpoint.

The ``image-reward`` package does not install beside current timm and transformers, so this module
re-creates its scoring path (``ImageReward.score`` in THUDM/ImageReward) from parts that do:

- image encoder: BLIP's ViT (ViT-L/16 at 224 px in the release) = transformers ``BlipVisionModel``;
- text encoder: BLIP's BERT with cross-attention to every image token = ``BlipTextModel``, run as
  an encoder (bidirectional self-attention), exactly like BLIP's image-text matching branch;
- head: an MLP on the text encoder's first ([CLS]) token, five linear layers without activations
  (as released), then the published normalisation ``(reward - 0.16717362830052426) / 1.0333394966054072``.

The official ``ImageReward.pt`` state dict is renamed onto those modules by :func:`map_checkpoint`;
every key must be used or be one of :data:`UNUSED_KEYS` (projections of BLIP's contrastive branch,
which scoring never reads), so a checkpoint that does not fit fails loudly instead of half-loading.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition
from noisesearch.errors import ConfigError
from noisesearch.weights import TOKENIZER_FILES, Source, check_all

if TYPE_CHECKING:
    import torch

#: The published score normalisation (ImageReward.py: ``self.mean``, ``self.std``).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
#: ImageReward's preprocessing: CLIP's normalisation after a bicubic resize and centre crop.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Prompts are padded or truncated to 35 tokens, [CLS] and [SEP] included.
MAX_TEXT_TOKENS = 35
HUB_REPO = "THUDM/ImageReward"
CHECKPOINT_FILE = "ImageReward.pt"
TOKENIZER = "bert-base-uncased"
#: BLIP's BERT configuration as released with ImageReward (``med_config.json``); the cross-attention
#: width comes from the image encoder.
MED_CONFIG: dict[str, Any] = {
    "vocab_size": 30524,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
#: BLIP's ViT: LayerNorm eps 1e-6, exact GELU, 64-dimensional heads (ViT-B 768/12, ViT-L 1024/16).
VISION_LAYER_NORM_EPS = 1e-6
VISION_HEAD_DIM = 64
#: Positions of the linear layers in the original ``MLP.layers`` (dropouts sit between them).
HEAD_LINEAR_POSITIONS = (0, 2, 4, 6, 7)
#: Checkpoint entries that scoring does not use: the contrastive projections of BLIP_Pretrain and
#: the text encoder's position-id buffer (transformers rebuilds it).
UNUSED_KEYS = (
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
    "blip.text_encoder.embeddings.position_ids",
)

_VISION_RULES = (  # BLIP ViT (timm-style) name -> BlipVisionModel name
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
)


class CheckpointMismatch(ValueError):
    """An ImageReward checkpoint whose keys do not fit the architecture; the message lists them."""


def map_checkpoint(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split and rename an official ``ImageReward.pt`` state dict for the transformers modules.

    Returns ``{"vision": ..., "text": ..., "head": ...}``, state dicts for ``BlipVisionModel``,
    ``BlipTextModel`` (no pooler) and the MLP head. The text encoder's names are BLIP's ``med.py``
    names, which transformers' BLIP text model kept. Raises :class:`CheckpointMismatch` naming
    every key that is neither mapped nor in :data:`UNUSED_KEYS`.
    """
    parts: dict[str, dict[str, Any]] = {"vision": {}, "text": {}, "head": {}}
    unexpected = []
    for key, value in state.items():
        if key in UNUSED_KEYS:
            continue
        if key.startswith("blip.visual_encoder."):
            name = _vision_name(key[len("blip.visual_encoder."):])
            if name is not None:
                parts["vision"][name] = value
                continue
        elif key.startswith("blip.text_encoder.") and not key.startswith("blip.text_encoder.pooler."):
            parts["text"][key[len("blip.text_encoder."):]] = value
            continue
        elif key.startswith("mlp.layers."):
            parts["head"][key[len("mlp.layers."):]] = value
            continue
        unexpected.append(key)
    if unexpected:
        raise CheckpointMismatch(
            f"the checkpoint has {len(unexpected)} keys that ImageReward does not have: "
            f"{', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}"
        )
    return parts


def _vision_name(name: str) -> str | None:
    for pattern, replacement in _VISION_RULES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def vision_config(vision_state: Mapping[str, torch.Tensor]) -> Any:
    """The ``BlipVisionConfig`` of a mapped ViT state dict: sizes from its shapes (the release is
    ViT-L/16 at 224 px), LayerNorm eps, activation and head width from BLIP's ViT code."""
    from transformers import BlipVisionConfig

    try:
        width = vision_state["embeddings.class_embedding"].shape[-1]
        patch = vision_state["embeddings.patch_embedding.weight"].shape[-1]
        positions = vision_state["embeddings.position_embedding"].shape[1]
        intermediate = vision_state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointMismatch(f"the checkpoint's image encoder lacks {exc.args[0]!r}") from None
    depth = 1 + max(int(k.split(".")[2]) for k in vision_state if k.startswith("encoder.layers."))
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1 or width % VISION_HEAD_DIM:
        raise CheckpointMismatch(
            f"image encoder of width {width} with {positions} positions is not a square BLIP ViT "
            f"with {VISION_HEAD_DIM}-dimensional heads"
        )
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=intermediate,
        num_hidden_layers=depth,
        num_attention_heads=width // VISION_HEAD_DIM,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=VISION_LAYER_NORM_EPS,
        attention_dropout=0.0,
    )


def text_config(med_config: Mapping[str, Any], encoder_width: int, tokenizer: Any) -> Any:
    """The ``BlipTextConfig`` for BLIP's BERT: ``med_config`` plus cross-attention to the image,
    with the special tokens of BLIP's tokenizer ([DEC] as bos, [SEP]).

    ``is_decoder=True`` only builds the cross-attention layers; scoring runs the model with
    ``is_decoder=False`` (bidirectional self-attention), as ImageReward does.
    """
    from transformers import BlipTextConfig

    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
            "max_position_embeddings", "layer_norm_eps", "pad_token_id")
    values = {key: med_config[key] for key in keys if key in med_config}
    return BlipTextConfig(
        **values, encoder_hidden_size=encoder_width, is_decoder=True, use_cache=False,
        bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
    )


def build_head(head_state: Mapping[str, torch.Tensor]) -> torch.nn.Sequential:
    """ImageReward's ``MLP.layers``: linear layers at positions 0, 2, 4, 6, 7 with dropouts between
    (identity at inference) and no activations, as released; widths from the checkpoint."""
    from torch import nn

    modules: list[nn.Module] = []
    for position in range(HEAD_LINEAR_POSITIONS[-1] + 1):
        if position in HEAD_LINEAR_POSITIONS:
            weight = head_state.get(f"{position}.weight")
            if weight is None:
                raise CheckpointMismatch(f"the checkpoint lacks mlp.layers.{position}.weight")
            modules.append(nn.Linear(weight.shape[1], weight.shape[0]))
        else:
            modules.append(nn.Dropout(0.0))
    return nn.Sequential(*modules)


def sources(checkpoint: str = HUB_REPO, tokenizer: str = TOKENIZER,
            med_config: str | None = None) -> tuple[Source, Source]:
    """Where the checkpoint and the tokenizer load from, without loading them: a
    :class:`ConfigError` naming every option (``imagereward.checkpoint``, ``imagereward.tokenizer``,
    ``imagereward.med_config``) that names something missing (``noisesearch.weights``)."""
    found = check_all(
        ("imagereward.checkpoint", checkpoint, [CHECKPOINT_FILE], CHECKPOINT_FILE, True),
        ("imagereward.tokenizer", tokenizer, [TOKENIZER_FILES], "--include '*.json' --include '*.txt'"),
    )
    if med_config is not None and not Path(med_config).expanduser().is_file():
        raise ConfigError("imagereward.med_config", f"{med_config!r} is no file")
    return found[0], found[1]


def checkpoint_file(checkpoint: str | Source) -> Path:
    """A local ``ImageReward.pt``, a folder holding one, or a hub repository id to download it from
    (through the hub cache; from the cache alone when the hub cannot be used: ``HF_HUB_OFFLINE=1``
    or no connection)."""
    source = checkpoint if isinstance(checkpoint, Source) else sources(checkpoint=checkpoint)[0]
    if source.path is not None:
        return source.path / CHECKPOINT_FILE if source.path.is_dir() else source.path
    from huggingface_hub import hf_hub_download

    with source.loading():
        return Path(hf_hub_download(repo_id=source.value, filename=CHECKPOINT_FILE,
                                    local_files_only=source.local_files_only))


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or a pickled state dict read with ``weights_only=True``."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointMismatch(f"{str(path)!r} does not hold a state dict")
    return dict(state)


class ImageRewardVerifier:
    """ImageReward human-preference score of an image for the prompt (Xu et al. 2023).

    Scores are on the published normalised scale (the raw reward minus 0.1672, divided by
    1.0333), higher is better.

    :param checkpoint: the official ``ImageReward.pt``: a hub repository id (default THUDM's
        release, fetched through the hub cache), a local file or a folder holding it. Loaded with
        ``torch.load(weights_only=True)``, or safetensors when the file ends in ``.safetensors``.
    :param tokenizer: Hugging Face id or folder of the BERT tokenizer (``bert-base-uncased``, as
        ImageReward uses; ``[DEC]`` and ``[ENC]`` are added like BLIP does).
    :param med_config: a JSON file with BLIP's BERT configuration (``med_config.json``); default:
        the values released with ImageReward (BERT-base, vocabulary 30524).
    :param device: torch device; default: CUDA if available, else CPU.
    :param dtype: dtype of the two encoders: float32, float16 or bfloat16; default: float16 on
        CUDA, float32 on CPU (the head always runs in float32, as in the original).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"prompt"})
    #: The reward is differentiable in the image (``score_with_grad``: the ``gradient`` strategy).
    differentiable: ClassVar[bool] = True

    def __init__(
        self,
        checkpoint: str = HUB_REPO,
        tokenizer: str = TOKENIZER,
        med_config: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        import torch
        from noisesearch.devices import resolve_device, resolve_dtype
        from transformers import AutoTokenizer, BlipTextModel, BlipVisionModel

        checkpoint_source, tokenizer_source = sources(checkpoint, tokenizer, med_config)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        med = dict(MED_CONFIG)
        if med_config is not None:
            med.update(json.loads(Path(med_config).expanduser().read_text()))
        with tokenizer_source.loading():
            self.tokenizer = AutoTokenizer.from_pretrained(
                tokenizer_source.load_from, **tokenizer_source.hub_kwargs()
            )
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # as BLIP's init_tokenizer()
        self.tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        if len(self.tokenizer) > med["vocab_size"]:
            raise ValueError(
                f"tokenizer {tokenizer!r} has {len(self.tokenizer)} tokens, more than the text "
                f"encoder's {med['vocab_size']}"
            )
        parts = map_checkpoint(load_state(checkpoint_file(checkpoint_source)))
        vision_cfg = vision_config(parts["vision"])
        self.image_size = int(vision_cfg.image_size)
        self.vision = BlipVisionModel(vision_cfg)
        self.text = BlipTextModel(
            text_config(med, vision_cfg.hidden_size, self.tokenizer), add_pooling_layer=False
        )
        self.head = build_head(parts["head"])
        for module, part in ((self.vision, "vision"), (self.text, "text"), (self.head, "head")):
            _load_strict(module, parts[part], part)
        self.vision.to(self.device, self.dtype).eval()
        self.text.to(self.device, self.dtype).eval()
        self.head.to(self.device, torch.float32).eval()
        for module in (self.vision, self.text, self.head):  # never trained here: no weight gradients
            module.requires_grad_(False)
        self._tokens: tuple[str, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def describe(cls, checkpoint: str = HUB_REPO, tokenizer: str = TOKENIZER, med_config: str | None = None,
                 **options: Any) -> dict[str, Any]:
        """Checked while planning, before anything loads: the checkpoint, the tokenizer and the
        ``med_config`` file are there (a local path, or a hub id cached or reachable)."""
        sources(checkpoint, tokenizer, med_config)
        return {"requires": cls.requires}

    def tokens(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``(1, 35)`` of a prompt, cached for the run's prompt."""
        if self._tokens is None or self._tokens[0] != prompt:
            encoded = self.tokenizer(
                prompt, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
            )
            ids = encoded["input_ids"].to(self.device)
            mask = encoded["attention_mask"].to(self.device)
            self._tokens = (prompt, ids, mask)
        return self._tokens[1], self._tokens[2]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """ImageReward's torchvision pipeline on tensors: bicubic resize of the short side
        (antialiased, as PIL does), centre crop, clip to the 8-bit image range, CLIP normalisation."""
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        size = self.image_size
        x = images.to(device=self.device, dtype=torch.float32)  # (B, 3, H, W)
        x = F.resize(x, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        x = F.center_crop(x, [size, size]).clamp(0.0, 1.0)
        return F.normalize(x, CLIP_MEAN, CLIP_STD).to(self.dtype)  # (B, 3, size, size)

    def rewards(self, images: torch.Tensor, prompt: str, grad: bool = False) -> torch.Tensor:
        """Normalised rewards ``(B,)`` in float32; with ``grad``, differentiable in the images
        (autograd on; the weights are frozen)."""
        import torch

        ids, mask = self.tokens(prompt)
        batch = images.shape[0]
        with torch.inference_mode(not grad):
            image_embeds = self.vision(pixel_values=self.preprocess(images)).last_hidden_state  # (B, 1+N, Dv)
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
            text = self.text(
                input_ids=ids.expand(batch, -1),
                attention_mask=mask.expand(batch, -1),
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
                is_decoder=False,
            )
            features = text.last_hidden_state[:, 0, :].float()  # (B, Dt): the [CLS] token
            reward = self.head(features).squeeze(-1)  # (B,)
            return (reward - REWARD_MEAN) / REWARD_STD

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, Any] | None = None,
    ) -> torch.Tensor:
        if condition.prompt is None:
            raise ValueError("ImageReward scores an image against a prompt; the condition has none")
        return self.rewards(images, condition.prompt)

    def score_with_grad(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        """``score`` with its autograd graph kept (B,): ReNO's ImageReward objective."""
        if condition.prompt is None:
            raise ValueError("ImageReward scores an image against a prompt; the condition has none")
        return self.rewards(images, condition.prompt, grad=True)


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], part: str) -> None:
    try:
        result = module.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # a shape that does not fit
        raise CheckpointMismatch(f"the checkpoint does not fit ImageReward's {part} part: {exc}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:10])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:10])}")
    if problems:
        raise CheckpointMismatch(
            f"the checkpoint does not fit ImageReward's {part} part: {'; '.join(problems)}"
        )
