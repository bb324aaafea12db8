"""Builders for the `shapes` networks: tokenizer, text encoder, VAE, UNet, scheduler, CLIP.

Sizes live here (one place for the training script and its tests); weights come from
``train.py``. Every builder imports torch / diffusers / transformers inside the function.

Tokenizer: CLIP's own byte-level BPE restricted to the world's words. Each vocabulary word
is tokenized by the full CLIP BPE (the file open_clip ships), and only the merges used on
the way are kept, in CLIP's rank order; BPE always applies the lowest-ranked pair present,
so dropping merges that were never the minimum leaves those derivations unchanged. Words
the full BPE splits (``cyan``, ``triangles``) get one more merge at the end, so every world
word is one ``word</w>`` token. The 512 byte symbols stay in the vocabulary: any other text
still tokenizes (into characters) instead of failing.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from noisesearch_builtin.shapes.world import IMAGE_SIZE

#: Token sequence length of both text towers (bos + up to 22 words + eos; suite prompts
#: have at most 11 words, and parse_prompt allows at most 4 objects of 4 words + "and"s).
MAX_TOKENS = 24
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
LATENT_CHANNELS = 4
#: The VAE halves each side: 32x32x3 images <-> 16x16x4 latents.
LATENT_SIZE = IMAGE_SIZE // 2

TEXT_CONFIG: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=3
)
VAE_CONFIG: dict[str, Any] = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
UNET_CONFIG: dict[str, Any] = dict(
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    attention_head_dim=4,  # diffusers' legacy name: the number of heads
    norm_num_groups=16,
)
CLIP_TEXT_CONFIG: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2
)
CLIP_VISION_CONFIG: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=3, patch_size=4
)
CLIP_PROJECTION = 64
#: DDIM as Stable Diffusion 1.x ships it, but predicting v (as SD 2.x): v keeps the
#: high-noise steps, where layout is decided, well-conditioned for a small model.
SCHEDULER_CONFIG: dict[str, Any] = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="v_prediction",
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


@lru_cache(maxsize=1)
def clip_bpe_merges() -> tuple[tuple[str, str], ...]:
    """CLIP's 48,894 BPE merges, in rank order, from the file open_clip_torch ships."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise RuntimeError("open_clip_torch is needed: it ships CLIP's BPE merges file")
    path = Path(spec.origin).with_name("bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1 : 48894 + 1]
    return tuple(tuple(line.split()) for line in lines)  # type: ignore[misc]


def _bpe(word: str, rank: dict[tuple[str, str], int]) -> tuple[list[str], set[tuple[str, str]]]:
    """CLIP's BPE of one lower-case ASCII word: its pieces and the merges applied."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    used: set[tuple[str, str]] = set()
    while len(pieces) > 1:
        best = min(zip(pieces, pieces[1:]), key=lambda pair: rank.get(pair, len(rank)))
        if best not in rank:
            break
        used.add(best)
        merged, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                merged.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces, used


def vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The restricted CLIP BPE (see the module docstring): vocabulary and ranked merges."""
    merges = clip_bpe_merges()
    rank = {pair: i for i, pair in enumerate(merges)}
    used: set[tuple[str, str]] = set()
    extra: list[tuple[str, str]] = []
    for word in sorted(words):
        pieces, applied = _bpe(word, rank)
        used |= applied
        while len(pieces) > 1:  # join what the full BPE leaves split, left to right
            extra.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    kept = [pair for pair in merges if pair in used] + extra
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    for a, b in kept:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, kept


def build_tokenizer(words: Iterable[str]) -> Any:
    """A ``CLIPTokenizer`` over ``words`` (each one token), padding to ``MAX_TOKENS``."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _text_config(tokenizer: Any, config: dict[str, Any], projection: int = CLIP_PROJECTION) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )


def build_text_encoder(tokenizer: Any) -> Any:
    """The pipeline's ``CLIPTextModel`` (random weights): its hidden states feed the UNet."""
    from transformers import CLIPTextModel

    return CLIPTextModel(_text_config(tokenizer, TEXT_CONFIG))


def build_vae() -> Any:
    """``AutoencoderKL``: 32x32x3 <-> 16x16x4 (``scaling_factor`` is set after training)."""
    from diffusers import AutoencoderKL

    levels = len(VAE_CONFIG["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=LATENT_CHANNELS,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
        **VAE_CONFIG,
    )


def build_unet() -> Any:
    """``UNet2DConditionModel`` on 16x16x4 latents, cross-attending to the text encoder."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        cross_attention_dim=TEXT_CONFIG["hidden_size"],
        **UNET_CONFIG,
    )


def build_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def build_clip(tokenizer: Any) -> Any:
    """A small contrastive ``CLIPModel``: ViT on 32x32 (4x4 patches) and a text transformer."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE, hidden_act="gelu", projection_dim=CLIP_PROJECTION, **CLIP_VISION_CONFIG
    )
    text = _text_config(tokenizer, CLIP_TEXT_CONFIG)
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=CLIP_PROJECTION
    )
    return CLIPModel(config)


def build_image_processor() -> Any:
    """32x32 in, no resize or crop at the native size, pixels mapped to [-1, 1]."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
