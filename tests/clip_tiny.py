"""Tiny real models for the CLIP, aesthetic and DINO verifier tests: random weights, built offline.

They go through the same loading paths as the published checkpoints: an open_clip architecture
registered with ``open_clip.add_model_config`` and a ``torch.save``'d state dict passed as
``pretrained``; an MLP state dict in the layout of LAION's ``sac+logos+ava1-l14-linearMSE.pth``;
a transformers ``Dinov2Model`` folder written by ``save_pretrained``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: The tiny architecture's name in open_clip's registry (once :func:`register_tiny_clip` ran).
TINY_CLIP = "noisesearch-tiny-clip"
TINY_EMBED_DIM = 32
TINY_IMAGE_SIZE = 32

TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": TINY_EMBED_DIM,
    "vision_cfg": {"image_size": TINY_IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 32,
                   "patch_size": 8},
    # The full CLIP vocabulary, so that open_clip's shipped BPE tokenizer fits.
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_clip(folder: Path) -> str:
    """Write the tiny config to ``folder`` and add it to open_clip's registry (~1.7 M params)."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_CLIP


def build_tiny_clip(seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny CLIP (the architecture must be registered)."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.create_model(TINY_CLIP, pretrained=None).eval()


def save_tiny_clip(path: Path, seed: int = 0, model: torch.nn.Module | None = None) -> Path:
    """Save a tiny CLIP's state dict (``torch.save``, loadable with ``weights_only=True``)."""
    model = model if model is not None else build_tiny_clip(seed)
    torch.save(model.state_dict(), path)
    return path


def aesthetic_mlp(input_size: int = TINY_EMBED_DIM, seed: int = 0) -> torch.nn.Sequential:
    """The improved aesthetic predictor's MLP (no activations; dropout at 1, 3, 5)."""
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(input_size, 1024), nn.Dropout(0.2),
        nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    ).eval()


def save_aesthetic_mlp(path: Path, input_size: int = TINY_EMBED_DIM, seed: int = 0) -> torch.nn.Sequential:
    """Save a random MLP under the published keys (``layers.0.weight`` ... ``layers.7.bias``)."""
    mlp = aesthetic_mlp(input_size, seed)
    torch.save({f"layers.{key}": value for key, value in mlp.state_dict().items()}, path)
    return mlp


def save_tiny_dino(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny ``Dinov2Model`` and its image processor, ``save_pretrained`` to ``folder``."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=image_size, patch_size=8,
    )
    Dinov2Model(config).eval().save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def save_tiny_transformers_clip(
    folder: Path, seed: int = 0, image_size: int = TINY_IMAGE_SIZE, as_processor: bool = False
) -> Path:
    """A tiny transformers ``CLIPModel`` with its tokenizer (CLIP's BPE, cut down) and image
    processor, ``save_pretrained`` to ``folder``: the layout of the shipped ``shapes`` CLIP.

    :param as_processor: save one ``CLIPProcessor`` (transformers 5 writes its image settings to
        ``processor_config.json``, as the shapes training script does) instead of the image
        processor and tokenizer apart (``preprocessor_config.json``); mean and std are then 0.5.
    """
    from diffusers_tiny import clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": image_size, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2,
        },
        projection_dim=TINY_EMBED_DIM,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    geometry = {
        "size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size},
    }
    if as_processor:
        processor = CLIPImageProcessor(**geometry, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    else:
        tokenizer.save_pretrained(folder)
        CLIPImageProcessor(**geometry).save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class TinyFiles:
    """Everything the verifier tests load, written once per test session."""

    clip: Path  # torch.save'd tiny CLIP state dict
    other_clip: Path  # a second tiny CLIP (different weights)
    aesthetic: Path  # random MLP, published key layout, on the tiny CLIP's 32-d embeddings
    dino: Path  # save_pretrained folder of a tiny Dinov2Model with its image processor


def make_tiny_files(folder: Path) -> TinyFiles:
    """Register the tiny architecture and write every tiny checkpoint under ``folder``."""
    register_tiny_clip(folder / "configs")
    save_aesthetic_mlp(folder / "aesthetic.pth")
    return TinyFiles(
        clip=save_tiny_clip(folder / "clip.pt", seed=0),
        other_clip=save_tiny_clip(folder / "other_clip.pt", seed=1),
        aesthetic=folder / "aesthetic.pth",
        dino=save_tiny_dino(folder / "dino"),
    )
