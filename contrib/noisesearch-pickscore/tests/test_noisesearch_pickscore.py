"""The pickscore verifier computes PickScore's README score on a tiny CLIP, loaded like the real one.

No download: a tiny ``CLIPConfig`` model is saved with ``save_pretrained``; the processor folder
holds the full CLIP tokenizer rebuilt from open_clip's BPE file and a scaled-down version of the
LAION CLIP-H image processor (224 px -> 32 px, same resampling, crop and mean/std).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import noisesearch
import pytest
import torch
import torch.nn.functional as F
from noisesearch import Condition
from noisesearch.errors import ConfigError, IncompatibleError
from noisesearch.testing import VerifierContract, seconds_without_hub

from noisesearch_pickscore.pickscore import PickScoreVerifier

PROMPT = "a photograph of a red apple on a wooden table"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_tokenizer() -> Any:
    """The 49,408-token CLIP BPE tokenizer, rebuilt from the vocabulary file open_clip ships."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe()) as handle:
        lines = handle.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    # transformers 5 ignores vocab_file=/merges_file= here: the tables go in directly.
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    root = tmp_path_factory.mktemp("tiny-pickscore")
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16, logit_scale_init_value=4.6052,  # PickScore's learned scale is about 100
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(root / "model")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                         image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())
    processor.save_pretrained(root / "processor")
    return {"model": str(root / "model"), "processor": str(root / "processor")}


@pytest.fixture(scope="session")
def verifier(tiny: dict[str, str]) -> PickScoreVerifier:
    """One verifier for the tests that only read it (loading is the slow part)."""
    return PickScoreVerifier(**tiny)


def smooth_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator)
    return (F.interpolate(coarse, size=(height, width), mode="bilinear") * 255).round() / 255


class TestPickScoreContract(VerifierContract):
    verifier_factory = PickScoreVerifier
    registered_name = "pickscore"
    image_shape = (3, 40, 36)

    @pytest.fixture(autouse=True)
    def _tiny_release(self, tiny: dict[str, str], verifier: PickScoreVerifier) -> None:
        self.verifier_options = tiny
        self.built = verifier

    def make_verifier(self) -> PickScoreVerifier:
        return self.built


def test_the_rebuilt_tokenizer_gives_open_clips_ids(verifier: PickScoreVerifier) -> None:
    import open_clip

    tokens = verifier.tokenizer(PROMPT, padding=True, truncation=True, max_length=77)
    ids = tokens["input_ids"]
    assert ids == open_clip.tokenize([PROMPT])[0, : len(ids)].tolist()


def test_score_is_the_readme_formula_on_the_library_preprocessed_pil_images(
    tiny: dict[str, str], verifier: PickScoreVerifier
) -> None:
    """PickScore's README: processor on PIL images, get_*_features, unit norm, logit_scale.exp() * dot."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    images = smooth_images(3, 48, 40)
    scores = verifier.score(images, Condition(prompt=PROMPT))

    model = AutoModel.from_pretrained(tiny["model"]).eval()
    processor = AutoImageProcessor.from_pretrained(tiny["processor"], backend="pil")
    tokenizer = AutoTokenizer.from_pretrained(tiny["processor"])
    pil = [Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()) for x in images]
    with torch.no_grad():
        image_embs = model.get_image_features(**processor(images=pil, return_tensors="pt")).pooler_output
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_inputs = tokenizer(PROMPT, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text_embs = model.get_text_features(**text_inputs).pooler_output
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        expected = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
    assert expected.std() > 0.05  # the tiny model tells the images apart
    # The PIL path rounds the resized images to 8 bits: cosines move by ~2e-4, times the scale of 100.
    assert torch.allclose(scores, expected, atol=0.05), (scores, expected)


def test_scores_are_cosines_scaled_by_the_learned_temperature(verifier: PickScoreVerifier) -> None:
    scale = float(verifier.model.logit_scale.detach().exp())
    scores = verifier.score(smooth_images(4, 32, 32, seed=1), Condition(prompt=PROMPT))
    assert 99.0 < scale < 101.0
    assert (scores.abs() <= scale + 1e-4).all()


def test_the_prompt_embedding_follows_the_prompt(verifier: PickScoreVerifier) -> None:
    images = smooth_images(2, 32, 32)
    apple = verifier.score(images, Condition(prompt=PROMPT))
    cat = verifier.score(images, Condition(prompt="a green cat"))
    assert not torch.allclose(apple, cat)
    assert torch.equal(verifier.score(images, Condition(prompt=PROMPT)), apple)


def test_pickscore_is_refused_for_the_class_conditional_digits_model(tiny: dict[str, str]) -> None:
    # The tiny release: the weights are found, whatever this machine's hub cache and network
    # (planning asks `describe`, which refuses missing weights, before it compares the needs).
    with pytest.raises(IncompatibleError, match="verifier 'pickscore' needs a prompt"):
        noisesearch.search(model="digits", verifiers=["pickscore"], write=False,
                           verifier_options={"pickscore": tiny})


def test_pickscore_refuses_a_model_that_is_not_clip(tiny: dict[str, str], tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs a CLIP model"):
        PickScoreVerifier(model=str(tmp_path), processor=tiny["processor"])


# -- missing weights: refused naming the option, before anything loads ---------------------------


def hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """A hub cache holding ``folder``'s files as ``repo_id`` at a made-up commit, as ``hf download``
    leaves it."""
    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    return root



@pytest.mark.parametrize(("option", "value"), [
    ("model", "{tmp}/nonexistent"), ("model", "./nonexistent"), ("model", "{tmp}/a/b/c"),
    ("processor", "{tmp}/nonexistent"), ("processor", "~/nonexistent-pickscore-processor"),
])
def test_a_path_that_does_not_exist_is_refused_naming_the_option(
    tiny: dict[str, str], tmp_path: Path, option: str, value: str
) -> None:
    value = value.format(tmp=tmp_path)
    options = {**tiny, option: value}
    refusal = rf"^pickscore\.{option}: '{re.escape(value)}' is no file or folder$"
    with pytest.raises(ConfigError, match=refusal):
        PickScoreVerifier.describe(**options)
    with pytest.raises(ConfigError, match=refusal):
        PickScoreVerifier(**options)


def test_an_empty_folder_is_refused_naming_the_option_and_the_missing_file(
    tiny: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"^pickscore\.model: the folder .* has no config\.json$"):
        PickScoreVerifier(**{**tiny, "model": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"^pickscore\.processor: the folder .* has no preprocessor_config"):
        PickScoreVerifier.describe(**{**tiny, "processor": str(tmp_path)})


def test_hub_ids_not_in_the_cache_while_offline_are_refused_with_the_download_commands(
    tiny: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    options = {**tiny, "processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}
    refusal = (r"^pickscore\.processor: 'laion/CLIP-ViT-H-14-laion2B-s32B-b79K' .*not in the local hub cache "
               r"while HF_HUB_OFFLINE=1\. .*`hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --include")
    with pytest.raises(ConfigError, match=refusal) as caught:
        PickScoreVerifier.describe(**options)
    assert "pickscore.model" not in str(caught.value)
    with pytest.raises(ConfigError, match=refusal):
        PickScoreVerifier(**options)
    with pytest.raises(ConfigError, match=r"^pickscore\.model: 'yuvalkirstain/PickScore_v1' .*`hf download "
                                          r"yuvalkirstain/PickScore_v1`.*; pickscore\.processor: "):
        PickScoreVerifier.describe()


def test_missing_weights_are_refused_while_planning_before_the_model_loads(
    tiny: dict[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "run"
    with pytest.raises(ConfigError, match="pickscore.model: .* is no file or folder"):
        noisesearch.search(model="shapes", prompt="a red circle", verifiers=["pickscore"], output=str(output),
                           verifier_options={"pickscore": {**tiny, "model": str(tmp_path / "nonexistent")}})
    assert not output.exists()


@pytest.mark.slow  # a fresh interpreter, where the hub's address can be set before huggingface_hub loads
def test_cached_hub_ids_load_from_the_cache_at_once_when_the_hub_cannot_be_reached(
    tiny: dict[str, str], tmp_path: Path
) -> None:
    """No HF_HUB_OFFLINE and no network: the cached model and processor load without waiting
    for huggingface_hub's retries of the optional files (about 25 s each)."""
    cache = tmp_path / "hub-cache"
    hub_cache(cache, "yuvalkirstain/PickScore_v1", Path(tiny["model"]))
    hub_cache(cache, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", Path(tiny["processor"]))
    # LAION's repository holds a CLIP model's config.json beside the processor's files.
    hub_cache(cache, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", Path(tiny["model"]))
    seconds = seconds_without_hub("from noisesearch_pickscore.pickscore import PickScoreVerifier",
                                  "PickScoreVerifier()", cache)
    assert seconds < 15
