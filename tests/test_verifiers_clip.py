"""clip-score, clip-zeroshot, aesthetic and consistency on tiny random-weight models, loaded through
the verifiers' real paths (an open_clip architecture + a local checkpoint file, a DINOv2 folder).

Each verifier's numbers are checked against an independent computation through the defining
library's public API (open_clip's PIL preprocessing, ``encode_image``/``encode_text``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F
from clip_tiny import (
    TINY_CLIP,
    TINY_IMAGE_SIZE,
    TinyFiles,
    aesthetic_mlp,
    build_tiny_clip,
    make_tiny_files,
    save_aesthetic_mlp,
    save_tiny_clip,
)
from torchvision.transforms.functional import to_pil_image

import noisesearch
from noisesearch import Condition, IncompatibleError
from noisesearch.testing import VerifierContract
from noisesearch_builtin.verifiers import clip_backbone
from noisesearch_builtin.verifiers.aesthetic import AestheticPredictor
from noisesearch_builtin.verifiers.clip_score import ClipScore
from noisesearch_builtin.verifiers.clip_zeroshot import ClipZeroShot
from noisesearch_builtin.verifiers.consistency import Consistency

PROMPT = "a photograph of a red apple on a wooden table"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyFiles:
    return make_tiny_files(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def fresh_cache() -> None:
    clip_backbone.clear_cache()
    yield
    clip_backbone.clear_cache()


def clip_options(tiny: TinyFiles, **extra: Any) -> dict[str, Any]:
    return {"model": TINY_CLIP, "pretrained": str(tiny.clip), "device": "cpu", **extra}


def quantised_images(n: int, size: int = TINY_IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    """Images that survive a round trip through 8-bit PIL exactly, at the model's resolution."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator).float() / 255


@pytest.fixture(scope="module")
def by_hand(tiny: TinyFiles) -> tuple[torch.nn.Module, Any, Any]:
    """The tiny CLIP, its PIL preprocessing and tokenizer, straight from open_clip."""
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=str(tiny.clip))
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_CLIP)


def image_embeddings_by_hand(model: Any, preprocess: Any, images: torch.Tensor) -> torch.Tensor:
    pixels = torch.stack([preprocess(to_pil_image(image)) for image in images])
    with torch.no_grad():
        return F.normalize(model.encode_image(pixels), dim=-1)


# -- contract suites ----------------------------------------------------------------------------


class _TinyContract(VerifierContract):
    image_shape = (3, 24, 40)  # not the model's size, not square: preprocessing has work to do
    extra_options: dict[str, Any] = {}

    @pytest.fixture(autouse=True)
    def _tiny(self, tiny: TinyFiles) -> None:
        self.tiny = tiny

    @property
    def verifier_options(self) -> dict[str, Any]:  # the contract builds factory(**these)
        return clip_options(self.tiny, **self.extra_options)


class TestClipScoreContract(_TinyContract):
    verifier_factory = ClipScore
    registered_name = "clip-score"


class TestClipZeroShotContract(_TinyContract):
    verifier_factory = ClipZeroShot
    registered_name = "clip-zeroshot"
    extra_options = {"templates": "simple"}


class TestAestheticContract(_TinyContract):
    verifier_factory = AestheticPredictor
    registered_name = "aesthetic"

    @property
    def verifier_options(self) -> dict[str, Any]:
        return clip_options(self.tiny, weights=str(self.tiny.aesthetic))


class TestConsistencyDinoContract(_TinyContract):
    verifier_factory = Consistency
    registered_name = "consistency"

    @property
    def verifier_options(self) -> dict[str, Any]:
        return {"backbone": "dino", "model": str(self.tiny.dino), "device": "cpu"}


class TestConsistencyClipContract(_TinyContract):
    verifier_factory = Consistency
    registered_name = "consistency"
    extra_options = {"backbone": "clip"}


# -- clip-score ---------------------------------------------------------------------------------


def test_clip_score_is_the_cosine_open_clip_gives_by_hand(tiny: TinyFiles, by_hand: Any) -> None:
    images = quantised_images(3)
    model, preprocess, tokenizer = by_hand
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer([PROMPT])), dim=-1)[0]
    expected = image_embeddings_by_hand(model, preprocess, images) @ text

    scores = ClipScore(**clip_options(tiny)).score(images, Condition(prompt=PROMPT))
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_clip_score_resizes_any_image_size_like_open_clip_does(tiny: TinyFiles, by_hand: Any) -> None:
    # open_clip resizes PIL images; ours are tensors: the same transform, up to 8-bit rounding.
    images = quantised_images(2, size=50)[:, :, :, 5:45]  # (2, 3, 50, 40)
    model, preprocess, tokenizer = by_hand
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer([PROMPT])), dim=-1)[0]
    expected = image_embeddings_by_hand(model, preprocess, images) @ text
    scores = ClipScore(**clip_options(tiny)).score(images, Condition(prompt=PROMPT))
    torch.testing.assert_close(scores, expected, atol=5e-3, rtol=0)


def test_clipscore_scale_is_two_and_a_half_times_the_positive_cosine(tiny: TinyFiles) -> None:
    images = quantised_images(4)
    cosine = ClipScore(**clip_options(tiny)).score(images, Condition(prompt=PROMPT))
    reported = ClipScore(**clip_options(tiny, scale="clipscore")).score(images, Condition(prompt=PROMPT))
    torch.testing.assert_close(reported, 2.5 * cosine.clamp(min=0))


def test_clip_score_encodes_each_prompt_once(tiny: TinyFiles) -> None:
    verifier = ClipScore(**clip_options(tiny))
    images = quantised_images(2)
    verifier.score(images, Condition(prompt=PROMPT))
    cached = verifier.prompt_embedding(PROMPT)
    verifier.score(images, Condition(prompt=PROMPT))
    assert list(verifier._prompts) == [PROMPT] and verifier.prompt_embedding(PROMPT) is cached


def test_clip_score_refuses_an_unknown_scale(tiny: TinyFiles) -> None:
    with pytest.raises(ValueError, match="cosine, clipscore"):
        ClipScore(**clip_options(tiny, scale="percent"))


# -- clip-zeroshot ------------------------------------------------------------------------------


CLASSES = ["dog", "cat", "car"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}."]


def class_embedding_by_hand(model: Any, tokenizer: Any, name: str) -> torch.Tensor:
    with torch.no_grad():
        texts = F.normalize(model.encode_text(tokenizer([t.format(name) for t in TEMPLATES])), dim=-1)
    return F.normalize(texts.mean(dim=0), dim=0)


def clip_seeing_only(target: torch.Tensor, path: Path) -> Path:
    """Tiny CLIP weights whose image tower maps every image to ``target`` exactly: the final
    layer norm outputs all ones (weight 0, bias 1) and a rank-one projection sends that to it."""
    model = build_tiny_clip(seed=0)
    visual = model.visual
    with torch.no_grad():
        visual.ln_post.weight.zero_()
        visual.ln_post.bias.fill_(1.0)
        width = visual.proj.shape[0]
        visual.proj.copy_(torch.ones(width, 1) / width @ target[None])
    return save_tiny_clip(path, model=model)


def test_zero_shot_prefers_the_class_the_images_embed_as(
    tiny: TinyFiles, by_hand: Any, tmp_path: Path
) -> None:
    model, _, tokenizer = by_hand
    cat = class_embedding_by_hand(model, tokenizer, "cat")
    weights = clip_seeing_only(cat, tmp_path / "sees-cats.pt")
    verifier = ClipZeroShot(
        model=TINY_CLIP, pretrained=str(weights), class_names=CLASSES, templates=TEMPLATES, device="cpu"
    )
    images = quantised_images(3)
    scores = torch.stack([verifier.score(images, Condition(label=k)) for k in range(3)])  # (class, B)
    assert (scores.argmax(dim=0) == CLASSES.index("cat")).all()
    scale = verifier.backbone.logit_scale()
    torch.testing.assert_close(scores[1], torch.full((3,), scale), atol=1e-4, rtol=1e-5)
    dog = class_embedding_by_hand(model, tokenizer, "dog")
    torch.testing.assert_close(scores[0], torch.full((3,), scale * float(dog @ cat)), atol=1e-4, rtol=1e-5)
    assert (verifier.predict(images) == 1).all()
    log_probs = ClipZeroShot(
        model=TINY_CLIP, pretrained=str(weights), class_names=CLASSES, templates=TEMPLATES,
        output="log_prob", device="cpu",
    )
    probs = torch.stack([log_probs.score(images, Condition(label=k)) for k in range(3)]).exp()
    torch.testing.assert_close(probs.sum(dim=0), torch.ones(3))
    assert (probs.argmax(dim=0) == 1).all()


def test_zero_shot_encodes_each_class_once_and_only_when_asked(tiny: TinyFiles) -> None:
    verifier = ClipZeroShot(**clip_options(tiny, templates="simple"))
    assert len(verifier.class_names) == 1000 and verifier.class_names[0] == "tench"
    images = quantised_images(2)
    first = verifier.score(images, Condition(label=3))
    cached = verifier._classes[3]
    torch.testing.assert_close(verifier.score(images, Condition(label=3)), first)
    assert list(verifier._classes) == [3] and verifier._classes[3] is cached


def test_zero_shot_names_the_range_for_an_impossible_label(tiny: TinyFiles) -> None:
    verifier = ClipZeroShot(**clip_options(tiny, class_names=CLASSES))
    with pytest.raises(ValueError, match="outside its 3 class names"):
        verifier.score(quantised_images(1), Condition(label=7))


# -- aesthetic ----------------------------------------------------------------------------------


def test_aesthetic_is_the_mlp_on_the_normalised_clip_embedding(tiny: TinyFiles, by_hand: Any) -> None:
    images = quantised_images(3)
    model, preprocess, _ = by_hand
    with torch.no_grad():
        expected = aesthetic_mlp(seed=0)(image_embeddings_by_hand(model, preprocess, images))[:, 0]
    scores = AestheticPredictor(**clip_options(tiny, weights=str(tiny.aesthetic))).score(images, Condition())
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_aesthetic_reads_safetensors_and_bare_sequential_keys(tiny: TinyFiles, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    mlp = aesthetic_mlp(seed=0)
    save_file(mlp.state_dict(), str(tmp_path / "mlp.safetensors"))  # keys "0.weight", ...
    images = quantised_images(2)
    published = AestheticPredictor(**clip_options(tiny, weights=str(tiny.aesthetic)))
    converted = AestheticPredictor(**clip_options(tiny, weights=str(tmp_path / "mlp.safetensors")))
    torch.testing.assert_close(converted.score(images, Condition()), published.score(images, Condition()))


def test_aesthetic_refuses_an_mlp_for_another_embedding_size(tiny: TinyFiles, tmp_path: Path) -> None:
    save_aesthetic_mlp(tmp_path / "l14.pth", input_size=768)
    with pytest.raises(ValueError, match="768-d embeddings.*32-d"):
        AestheticPredictor(**clip_options(tiny, weights=str(tmp_path / "l14.pth")))


class Payload:
    """Unpickling this would run code: weights_only loading must refuse it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("arbitrary code ran",))


def test_aesthetic_never_unpickles_arbitrary_objects(tiny: TinyFiles, tmp_path: Path) -> None:
    torch.save({"layers.0.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        AestheticPredictor(**clip_options(tiny, weights=str(tmp_path / "evil.pth")))


# -- consistency --------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["dino", "clip"])
def test_consistency_is_one_for_identical_images_and_lower_otherwise(tiny: TinyFiles, backbone: str) -> None:
    if backbone == "dino":
        verifier = Consistency(backbone="dino", model=str(tiny.dino), device="cpu")
    else:
        verifier = Consistency(**clip_options(tiny, backbone="clip"))
    final = quantised_images(3, seed=0)
    other = quantised_images(3, seed=1)
    same = verifier.score(final, Condition(), trajectory={0.4: final.clone()})
    torch.testing.assert_close(same, torch.ones(3), atol=1e-5, rtol=0)
    different = verifier.score(final, Condition(), trajectory={0.4: other})
    assert (different < 1 - 1e-4).all(), different


def test_consistency_reads_the_level_nearest_to_0_4(tiny: TinyFiles) -> None:
    verifier = Consistency(backbone="dino", model=str(tiny.dino), device="cpu")
    final, other = quantised_images(2, seed=0), quantised_images(2, seed=1)
    # the engine keys the capture by the grid step nearest 0.4; another verifier may add levels
    scores = verifier.score(final, Condition(), trajectory={0.8: other, 0.45: final})
    torch.testing.assert_close(scores, torch.ones(2), atol=1e-5, rtol=0)
    assert Consistency.trajectory_levels == (0.4,) and Consistency.requires == frozenset({"trajectory"})


def test_consistency_without_a_trajectory_says_what_it_needs(tiny: TinyFiles) -> None:
    verifier = Consistency(backbone="dino", model=str(tiny.dino), device="cpu")
    with pytest.raises(ValueError, match="level 0.4"):
        verifier.score(quantised_images(1), Condition())


def test_a_digits_search_runs_with_the_consistency_verifier(tiny: TinyFiles) -> None:
    result = noisesearch.search(
        model="digits", label=3, candidates=4, steps=5, verifiers=["consistency"],
        verifier_options={"consistency": {"model": str(tiny.dino), "device": "cpu"}}, write=False,
    )
    assert result.usage.candidates == 4
    values = [candidate.scores["consistency"] for candidate in result.top]
    assert all(-1.0 <= value <= 1.0 + 1e-5 for value in values)
    assert result.best.objective == max(values)


# -- one CLIP per settings, and nothing loaded for an impossible run ----------------------------


def test_verifiers_with_the_same_clip_settings_load_it_once(tiny: TinyFiles, fresh_cache: None) -> None:
    before = clip_backbone.load_count()
    score = ClipScore(**clip_options(tiny))
    aesthetic = AestheticPredictor(**clip_options(tiny, weights=str(tiny.aesthetic)))
    zeroshot = ClipZeroShot(**clip_options(tiny, dtype="fp32"))  # an alias: still the same model
    consistency = Consistency(**clip_options(tiny, backbone="clip"))
    assert clip_backbone.load_count() == before + 1
    assert score.backbone is aesthetic.backbone is zeroshot.backbone is consistency.clip
    other = ClipScore(**clip_options(tiny, pretrained=str(tiny.other_clip)))
    assert clip_backbone.load_count() == before + 2 and other.backbone is not score.backbone
    assert len(clip_backbone.cached_backbones()) == 2


def test_a_prompt_verifier_on_the_digits_model_is_refused_before_loading(fresh_cache: None) -> None:
    before = clip_backbone.load_count()
    with pytest.raises(IncompatibleError, match="clip-score.*needs a prompt"):
        noisesearch.search(model="digits", verifiers=["clip-score"], write=False)
    with pytest.raises(IncompatibleError, match="clip-score"):
        noisesearch.search(model="digits", evaluator="clip-score", write=False)
    assert clip_backbone.cached_backbones() == [] and clip_backbone.load_count() == before


def test_bfloat16_scores_stay_close_to_float32(tiny: TinyFiles) -> None:
    images = quantised_images(3)
    full = ClipScore(**clip_options(tiny)).score(images, Condition(prompt=PROMPT))
    half = ClipScore(**clip_options(tiny, dtype="bfloat16")).score(images, Condition(prompt=PROMPT))
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=2e-2, rtol=0)


def test_dtype_names_are_checked(tiny: TinyFiles) -> None:
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        ClipScore(**clip_options(tiny, dtype="int8"))
