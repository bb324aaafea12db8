"""The imagereward verifier loads the official checkpoint layout and scores like the original code.

No download: a tiny BLIP (ViT width 64, BERT width 32) gets random weights written under the key
names of the official ``ImageReward.pt`` (taken from THUDM/ImageReward's ``BLIP_Pretrain`` + ``MLP``
and BLIP's ``vit.py`` / ``med.py``), saved with ``torch.save`` and loaded through the verifier's
real path. The expected score comes from a plain-torch re-implementation of that original code.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import noisesearch
import pytest
import torch
import torch.nn.functional as F
from noisesearch import Condition
from noisesearch.errors import ConfigError, IncompatibleError
from noisesearch.testing import VerifierContract, seconds_without_hub

from noisesearch_imagereward.imagereward import (
    CHECKPOINT_FILE,
    CLIP_MEAN,
    CLIP_STD,
    REWARD_MEAN,
    REWARD_STD,
    UNUSED_KEYS,
    CheckpointMismatch,
    ImageRewardVerifier,
    map_checkpoint,
)

PROMPT = "a photograph of a red apple on a wooden table"
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "apple", "photo", "##graph", "of",
         "on", "wooden", "table", "the", "green", "cat", ",", "!"]
# Tiny stand-ins for ViT-L/16 at 224 px and BERT-base; 64-dimensional vision heads like BLIP's ViTs.
VISION = {"width": 64, "depth": 2, "patch": 8, "image": 32, "heads": 1}
MED = {"vocab_size": len(WORDS) + 2, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
       "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 40,
       "layer_norm_eps": 1e-12, "pad_token_id": 0}
HEAD_WIDTHS = [(0, 1024), (2, 128), (4, 64), (6, 16), (7, 1)]  # MLP(768) of ImageReward.py


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official checkpoint's names and shapes (ImageReward.state_dict())."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    def norm(name: str, width: int) -> None:
        state[f"{name}.weight"] = 1 + rand(width, scale=0.1)
        state[f"{name}.bias"] = rand(width, scale=0.1)

    def linear(name: str, out: int, inp: int) -> None:
        state[f"{name}.weight"] = rand(out, inp, scale=1.5 / math.sqrt(inp))
        state[f"{name}.bias"] = rand(out, scale=0.1)

    width, patch = VISION["width"], VISION["patch"]
    positions = (VISION["image"] // patch) ** 2 + 1
    vit = "blip.visual_encoder"
    state[f"{vit}.cls_token"] = rand(1, 1, width, scale=0.5)
    state[f"{vit}.pos_embed"] = rand(1, positions, width, scale=0.5)
    state[f"{vit}.patch_embed.proj.weight"] = rand(width, 3, patch, patch, scale=1 / patch)
    state[f"{vit}.patch_embed.proj.bias"] = rand(width, scale=0.1)
    for i in range(VISION["depth"]):
        block = f"{vit}.blocks.{i}"
        norm(f"{block}.norm1", width)
        linear(f"{block}.attn.qkv", 3 * width, width)
        linear(f"{block}.attn.proj", width, width)
        norm(f"{block}.norm2", width)
        linear(f"{block}.mlp.fc1", 4 * width, width)
        linear(f"{block}.mlp.fc2", width, 4 * width)
    norm(f"{vit}.norm", width)

    hidden, inter = MED["hidden_size"], MED["intermediate_size"]
    bert = "blip.text_encoder"
    state[f"{bert}.embeddings.position_ids"] = torch.arange(MED["max_position_embeddings"]).expand(1, -1)
    state[f"{bert}.embeddings.word_embeddings.weight"] = rand(MED["vocab_size"], hidden, scale=1.0)
    text_positions = MED["max_position_embeddings"]
    state[f"{bert}.embeddings.position_embeddings.weight"] = rand(text_positions, hidden, scale=0.3)
    norm(f"{bert}.embeddings.LayerNorm", hidden)
    for i in range(MED["num_hidden_layers"]):
        layer = f"{bert}.encoder.layer.{i}"
        for attention, context in (("attention", hidden), ("crossattention", width)):
            linear(f"{layer}.{attention}.self.query", hidden, hidden)
            linear(f"{layer}.{attention}.self.key", hidden, context)
            linear(f"{layer}.{attention}.self.value", hidden, context)
            linear(f"{layer}.{attention}.output.dense", hidden, hidden)
            norm(f"{layer}.{attention}.output.LayerNorm", hidden)
        linear(f"{layer}.intermediate.dense", inter, hidden)
        linear(f"{layer}.output.dense", hidden, inter)
        norm(f"{layer}.output.LayerNorm", hidden)
    linear("blip.vision_proj", 256, width)
    linear("blip.text_proj", 256, hidden)
    previous = hidden
    for position, out in HEAD_WIDTHS:
        linear(f"mlp.layers.{position}", out, previous)
        previous = out
    return state


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny release: checkpoint folder, med_config.json and a WordPiece tokenizer folder."""
    from transformers import BertTokenizer

    root = tmp_path_factory.mktemp("tiny-imagereward")
    state = official_state_dict()
    torch.save(state, root / CHECKPOINT_FILE)
    (root / "med_config.json").write_text(json.dumps(MED))
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(root / "tokenizer")
    options = {"checkpoint": str(root), "tokenizer": str(root / "tokenizer"),
               "med_config": str(root / "med_config.json")}
    return {"root": root, "state": state, "options": options}


@pytest.fixture(scope="session")
def verifier(tiny: dict[str, Any]) -> ImageRewardVerifier:
    """One verifier for the tests that only read it (loading is the slow part)."""
    return ImageRewardVerifier(**tiny["options"])


def smooth_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator)
    fine = F.interpolate(coarse, size=(height, width), mode="bilinear")
    return (fine * 255).round() / 255  # (B, 3, H, W) on the 8-bit grid


# -- the original forward pass, by hand ----------------------------------------------------------


def original_reward(state: dict[str, torch.Tensor], pixels: torch.Tensor, ids: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """ImageReward.score: BLIP ViT (vit.py), BERT with cross-attention (med.py), MLP, normalisation."""

    def w(name: str) -> torch.Tensor:
        return state[name]

    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, w(f"{name}.weight"), w(f"{name}.bias"))

    def ln(x: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], w(f"{name}.weight"), w(f"{name}.bias"), eps)

    vit, heads = "blip.visual_encoder", VISION["heads"]
    x = F.conv2d(pixels, w(f"{vit}.patch_embed.proj.weight"), w(f"{vit}.patch_embed.proj.bias"),
                 stride=VISION["patch"]).flatten(2).transpose(1, 2)
    x = torch.cat([w(f"{vit}.cls_token").expand(x.shape[0], -1, -1), x], dim=1) + w(f"{vit}.pos_embed")
    for i in range(VISION["depth"]):
        block = f"{vit}.blocks.{i}"
        h = ln(x, f"{block}.norm1", 1e-6)
        batch, tokens, channels = h.shape
        qkv = lin(h, f"{block}.attn.qkv").reshape(batch, tokens, 3, heads, channels // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * (channels // heads) ** -0.5).softmax(dim=-1)
        x = x + lin((attention @ v).transpose(1, 2).reshape(batch, tokens, channels), f"{block}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"{block}.norm2", 1e-6), f"{block}.mlp.fc1")), f"{block}.mlp.fc2")
    image = ln(x, f"{vit}.norm", 1e-6)

    bert, heads, eps = "blip.text_encoder", MED["num_attention_heads"], MED["layer_norm_eps"]
    ids, mask = ids.expand(image.shape[0], -1), mask.expand(image.shape[0], -1)
    e = F.embedding(ids, w(f"{bert}.embeddings.word_embeddings.weight"))
    e = e + w(f"{bert}.embeddings.position_embeddings.weight")[: ids.shape[1]]
    e = ln(e, f"{bert}.embeddings.LayerNorm", eps)
    self_mask = (1.0 - mask[:, None, None, :].float()) * -10000.0  # get_extended_attention_mask
    cross_mask = torch.zeros(1)  # image_atts are all ones

    def attend(hidden: torch.Tensor, context: torch.Tensor, additive: torch.Tensor,
               name: str) -> torch.Tensor:
        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        q, k, v = split(lin(hidden, f"{name}.self.query")), split(lin(context, f"{name}.self.key")), split(
            lin(context, f"{name}.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(hidden.shape)
        return ln(lin(out, f"{name}.output.dense") + hidden, f"{name}.output.LayerNorm", eps)

    for i in range(MED["num_hidden_layers"]):
        layer = f"{bert}.encoder.layer.{i}"
        h = attend(e, e, self_mask, f"{layer}.attention")
        h = attend(h, image, cross_mask, f"{layer}.crossattention")
        e = ln(lin(F.gelu(lin(h, f"{layer}.intermediate.dense")), f"{layer}.output.dense") + h,
               f"{layer}.output.LayerNorm", eps)
    reward = e[:, 0, :]
    for position, _ in HEAD_WIDTHS:
        reward = lin(reward, f"mlp.layers.{position}")
    return ((reward - REWARD_MEAN) / REWARD_STD).squeeze(-1)


# -- the contract suite --------------------------------------------------------------------------


class TestImageRewardContract(VerifierContract):
    verifier_factory = ImageRewardVerifier
    registered_name = "imagereward"
    image_shape = (3, 40, 36)

    @pytest.fixture(autouse=True)
    def _tiny_release(self, tiny: dict[str, Any], verifier: ImageRewardVerifier) -> None:
        self.verifier_options = tiny["options"]
        self.built = verifier

    def make_verifier(self) -> ImageRewardVerifier:
        return self.built


# -- the checkpoint ------------------------------------------------------------------------------


def test_every_official_key_is_mapped_or_known_unused_and_every_module_weight_is_filled(
    tiny: dict[str, Any], verifier: ImageRewardVerifier
) -> None:
    state = tiny["state"]
    parts = map_checkpoint(state)
    mapped = sum(len(part) for part in parts.values())
    assert mapped + len(UNUSED_KEYS) == len(state)
    for name, module in (("vision", verifier.vision), ("text", verifier.text), ("head", verifier.head)):
        assert set(module.state_dict()) == set(parts[name]), name
        for key, value in module.state_dict().items():
            assert torch.equal(value, parts[name][key]), (name, key)


def test_a_checkpoint_with_a_foreign_or_a_missing_key_is_refused_by_name(tiny: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    foreign = dict(tiny["state"])
    foreign["blip.visual_encoder.blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch, match="blocks.0.attn.extra"):
        map_checkpoint(foreign)
    missing = dict(tiny["state"])
    del missing["blip.text_encoder.encoder.layer.1.crossattention.self.key.bias"]
    torch.save(missing, tmp_path / CHECKPOINT_FILE)
    options = {**tiny["options"], "checkpoint": str(tmp_path / CHECKPOINT_FILE)}
    with pytest.raises(CheckpointMismatch, match=r"missing encoder\.layer\.1\.crossattention\.self\.key"):
        ImageRewardVerifier(**options)


def test_the_checkpoint_loads_from_the_hub_cache_offline(tiny: dict[str, Any], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         verifier: ImageRewardVerifier) -> None:
    """The default path: hf_hub_download("THUDM/ImageReward", "ImageReward.pt"), here served from a
    hub cache with HF_HUB_OFFLINE, as on a machine that downloaded it before."""
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "models--THUDM--ImageReward"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / CHECKPOINT_FILE).write_bytes((tiny["root"] / CHECKPOINT_FILE).read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    options = {**tiny["options"], "checkpoint": "THUDM/ImageReward"}
    images = smooth_images(2, 32, 32)
    from_hub = ImageRewardVerifier(**options).score(images, Condition(prompt=PROMPT))
    from_folder = verifier.score(images, Condition(prompt=PROMPT))
    assert torch.equal(from_hub, from_folder)


# -- the score -----------------------------------------------------------------------------------


def test_score_equals_the_original_imagereward_forward_pass_computed_by_hand(
    tiny: dict[str, Any], verifier: ImageRewardVerifier
) -> None:
    images = smooth_images(3, 48, 40, seed=1)
    ids, mask = verifier.tokens(PROMPT)
    assert ids.shape == (1, 35) and 0 < int(mask.sum()) < 35  # padded, so the mask matters
    expected = original_reward(tiny["state"], verifier.preprocess(images), ids, mask)
    scores = verifier.score(images, Condition(prompt=PROMPT))
    assert expected.std() > 0.05  # the tiny model tells the images apart
    assert torch.allclose(scores, expected, atol=1e-4), (scores, expected)


def test_score_equals_the_transformers_modules_run_step_by_step(verifier: ImageRewardVerifier) -> None:
    images = smooth_images(2, 32, 32, seed=4)
    encoded = verifier.tokenizer(PROMPT, padding="max_length", truncation=True, max_length=35,
                                 return_tensors="pt")
    with torch.no_grad():
        image_embeds = verifier.vision(pixel_values=verifier.preprocess(images)).last_hidden_state
        text = verifier.text(
            input_ids=encoded["input_ids"].expand(2, -1),
            attention_mask=encoded["attention_mask"].expand(2, -1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long),
        )
        expected = (verifier.head(text.last_hidden_state[:, 0]).squeeze(-1) - REWARD_MEAN) / REWARD_STD
    assert torch.allclose(verifier.score(images, Condition(prompt=PROMPT)), expected, atol=1e-6)


def test_the_cached_prompt_tokens_follow_the_prompt(verifier: ImageRewardVerifier) -> None:
    images = smooth_images(2, 32, 32)
    apple = verifier.score(images, Condition(prompt=PROMPT))
    cat = verifier.score(images, Condition(prompt="a green cat"))
    assert not torch.allclose(apple, cat)
    assert torch.equal(verifier.score(images, Condition(prompt=PROMPT)), apple)


def test_preprocessing_matches_the_original_torchvision_pipeline_on_pil_images(
    verifier: ImageRewardVerifier,
) -> None:
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    size = verifier.image_size
    original = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size), ToTensor(),
                        Normalize(CLIP_MEAN, CLIP_STD)])  # ImageReward.py's _transform(n_px)
    images = smooth_images(3, 57, 45, seed=2)
    pil = [Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()) for x in images]
    expected = torch.stack([original(p) for p in pil])
    ours = verifier.preprocess(images)
    assert ours.shape == expected.shape == (3, 3, size, size)
    assert (ours - expected).abs().max() < 1.5 / 255 / min(CLIP_STD)  # PIL rounds to 8 bits


# -- refused before anything loads ---------------------------------------------------------------


def test_imagereward_is_refused_for_the_class_conditional_digits_model(tiny: dict[str, Any]) -> None:
    # The tiny release: the weights are found, whatever this machine's hub cache and network
    # (planning asks `describe`, which refuses missing weights, before it compares the needs).
    with pytest.raises(IncompatibleError, match="verifier 'imagereward' needs a prompt"):
        noisesearch.search(model="digits", verifiers=["imagereward"], write=False,
                           verifier_options={"imagereward": tiny["options"]})


# -- missing weights: refused naming the option, before anything loads ---------------------------


def hub_cache(root: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A hub cache holding ``files`` of ``repo_id`` at a made-up commit, as ``hf download`` leaves it."""
    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return root



@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize(("option", "value"), [
    ("checkpoint", "{tmp}/nonexistent.pt"), ("checkpoint", "nonexistent.pt"),
    ("checkpoint", "{tmp}/no/folder"), ("tokenizer", "{tmp}/nonexistent"), ("tokenizer", "./nonexistent"),
    ("med_config", "{tmp}/med_config.json"),
])
def test_a_path_that_does_not_exist_is_refused_naming_the_option(
    tiny: dict[str, Any], tmp_path: Path, option: str, value: str
) -> None:
    value = value.format(tmp=tmp_path)
    options = {**tiny["options"], option: value}
    refusal = rf"^imagereward\.{option}: '{re.escape(value)}' is no file"
    with pytest.raises(ConfigError, match=refusal):
        ImageRewardVerifier.describe(**options)
    with pytest.raises(ConfigError, match=refusal):
        ImageRewardVerifier(**options)


def test_a_folder_without_the_files_is_refused_naming_the_option(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    no_checkpoint = rf"^imagereward\.checkpoint: the folder .* has no {CHECKPOINT_FILE}$"
    with pytest.raises(ConfigError, match=no_checkpoint):
        ImageRewardVerifier.describe(**{**tiny["options"], "checkpoint": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"^imagereward\.tokenizer: the folder .* has no tokenizer_config"):
        ImageRewardVerifier.describe(**{**tiny["options"], "tokenizer": str(tmp_path)})


def test_hub_ids_not_in_the_cache_while_offline_are_refused_with_the_download_commands(
    tiny: dict[str, Any], empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    options = {**tiny["options"], "checkpoint": "THUDM/ImageReward"}
    refusal = (r"^imagereward\.checkpoint: 'THUDM/ImageReward' .* ImageReward\.pt is not in the local hub "
               r"cache while HF_HUB_OFFLINE=1\. .*`hf download THUDM/ImageReward ImageReward\.pt`")
    with pytest.raises(ConfigError, match=refusal) as caught:
        ImageRewardVerifier.describe(**options)
    assert "tokenizer" not in str(caught.value)
    with pytest.raises(ConfigError, match=refusal):
        ImageRewardVerifier(**options)
    # Both missing (a fresh offline machine): one message names both, the tokenizer first loaded.
    with pytest.raises(ConfigError, match=r"^imagereward\.checkpoint: .*; imagereward\.tokenizer: "
                                          r"'bert-base-uncased' .*`hf download bert-base-uncased "):
        ImageRewardVerifier.describe()


def test_missing_weights_are_refused_while_planning_before_the_model_loads(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    output = tmp_path / "run"
    missing = str(tmp_path / "nonexistent.pt")
    with pytest.raises(ConfigError, match="imagereward.checkpoint: .* is no file or folder"):
        noisesearch.search(model="shapes", prompt="a red circle", verifiers=["imagereward"],
                           output=str(output),
                           verifier_options={"imagereward": {**tiny["options"], "checkpoint": missing}})
    assert not output.exists()


@pytest.mark.slow  # a fresh interpreter imports torch and the plugins
def test_the_cli_dry_run_refuses_a_missing_checkpoint_in_one_line(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    missing = str(tmp_path / "nonexistent.pt")
    done = subprocess.run(
        [sys.executable, "-c", "from noisesearch.console import main; main()", "run", "--model", "shapes",
         "--prompt", "a red circle", "--verifier", "imagereward", "--dry-run",
         "--verifier-opt", f"imagereward.checkpoint={missing}", "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert f"imagereward.checkpoint: '{missing}' is no file or folder" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow  # a fresh interpreter, where the hub's address can be set before huggingface_hub loads
def test_cached_hub_ids_load_from_the_cache_at_once_when_the_hub_cannot_be_reached(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """No HF_HUB_OFFLINE and no network: the cached checkpoint and tokenizer load without waiting
    for huggingface_hub's retries of the optional files (about 25 s each)."""
    from transformers import BertConfig

    cache = tmp_path / "hub-cache"
    hub_cache(cache, "THUDM/ImageReward", {CHECKPOINT_FILE: (tiny["root"] / CHECKPOINT_FILE).read_bytes()})
    tokenizer = {p.name: p.read_bytes() for p in (tiny["root"] / "tokenizer").iterdir()}
    config = BertConfig(vocab_size=len(WORDS), hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    hub_cache(cache, "bert-base-uncased", {**tokenizer, "config.json": config.to_json_string().encode()})
    imports = "import torch\nfrom noisesearch_imagereward.imagereward import ImageRewardVerifier"
    build = f"ImageRewardVerifier(med_config={tiny['options']['med_config']!r})"
    seconds = seconds_without_hub(imports, build, cache)
    assert seconds < 15
