"""The transformers-backed built-in verifiers ``dino`` and ``classifier``, on tiny models saved
with ``save_pretrained`` and loaded back through the same ``from_pretrained`` path as hub models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import noisesearch
from noisesearch import Condition
from noisesearch.errors import IncompatibleError
from noisesearch.plugins import build_registries
from noisesearch.testing import GaussianModel, VerifierContract
from noisesearch_builtin.verifiers.classifier import ImageClassifierVerifier, pixel_values
from noisesearch_builtin.verifiers.dino import DinoVerifier

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Five ImageNet-style names; "crane" is two classes in ImageNet too (the bird and the machine).
FIVE_CLASSES = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 2: "crane",
                3: "tiger shark, Galeocerdo cuvieri", 4: "crane"}
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="session")
def dino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Dinov2ForImageClassification with the real model's processor semantics
    (BitImageProcessor: shortest edge, bicubic, centre crop, ImageNet mean/std), scaled down."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2ForImageClassification

    folder = tmp_path_factory.mktemp("tiny-dinov2")
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=4,
        image_size=16, id2label=FIVE_CLASSES, label2id={v: k for k, v in FIVE_CLASSES.items()},
    )
    torch.manual_seed(0)
    Dinov2ForImageClassification(config).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16},
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT digit classifier whose classes are named "zero".."nine" (bilinear resize to a
    square, no crop, mean/std 0.5: ViTImageProcessor's semantics)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("tiny-vit")
    names = dict(enumerate(DIGIT_NAMES))
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=16, patch_size=4, id2label=names, label2id={v: k for k, v in names.items()},
    )
    torch.manual_seed(1)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def dino(dino_dir: Path) -> DinoVerifier:
    """One verifier for the tests that only read it (loading is the slow part)."""
    return DinoVerifier(model=str(dino_dir))


@pytest.fixture(scope="session")
def vit(vit_dir: Path) -> ImageClassifierVerifier:
    return ImageClassifierVerifier(model=str(vit_dir))


@pytest.fixture(scope="session")
def vit_by_names(vit_dir: Path) -> ImageClassifierVerifier:
    return ImageClassifierVerifier(model=str(vit_dir), label_map=DIGIT_NAMES)


def smooth_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Images in [0, 1] on an 8-bit grid, smooth enough that resampling does not overshoot."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return (fine * 255).round() / 255  # (B, 3, H, W)


def to_pil(images: torch.Tensor) -> list[Any]:
    from PIL import Image

    return [Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()) for x in images]


# -- the contract suite --------------------------------------------------------------------------


class TestDinoContract(VerifierContract):
    verifier_factory = DinoVerifier
    registered_name = "dino"
    image_shape = (3, 24, 20)

    @pytest.fixture(autouse=True)
    def _tiny_model(self, dino: DinoVerifier) -> None:
        self.built = dino

    def make_verifier(self) -> DinoVerifier:
        return self.built


class TestClassifierContract(VerifierContract):
    verifier_factory = ImageClassifierVerifier
    registered_name = "classifier"
    image_shape = (3, 8, 8)  # the digits model's size: upsampled by the processor

    @pytest.fixture(autouse=True)
    def _tiny_model(self, vit_by_names: ImageClassifierVerifier) -> None:
        self.built = vit_by_names

    def make_verifier(self) -> ImageClassifierVerifier:
        return self.built


# -- what the scores are -------------------------------------------------------------------------


def test_preprocessing_matches_the_library_processor_on_8bit_pil_images(
    dino_dir: Path, dino: DinoVerifier
) -> None:
    from transformers import AutoImageProcessor

    images = smooth_images(3, 30, 26)
    ours = pixel_values(dino.processor, images, "cpu", torch.float32)
    reference = AutoImageProcessor.from_pretrained(dino_dir, backend="pil")(
        images=to_pil(images), return_tensors="pt"
    )["pixel_values"]
    assert ours.shape == reference.shape == (3, 3, 16, 16)
    # The PIL path rounds the resized image to 8 bits: at most 1/255 per pixel, over std 0.224.
    assert (ours - reference).abs().max() < 1.5 / 255 / 0.224


def test_dino_score_is_the_log_probability_of_the_class_under_the_tiny_model(
    dino_dir: Path, dino: DinoVerifier
) -> None:
    from transformers import AutoImageProcessor, Dinov2ForImageClassification

    images = smooth_images(4, 40, 36, seed=2)
    scores = dino.score(images, Condition(label=3))
    network = Dinov2ForImageClassification.from_pretrained(dino_dir).eval()
    processor = AutoImageProcessor.from_pretrained(dino_dir, backend="pil")
    with torch.no_grad():
        inputs = processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
        expected = network(pixel_values=inputs).logits.log_softmax(dim=-1)[:, 3]
    assert torch.allclose(scores, expected, atol=2e-3), (scores, expected)


def test_classifier_and_dino_agree_on_a_dinov2_model(dino_dir: Path, dino: DinoVerifier) -> None:
    images = smooth_images(2, 16, 16)
    condition = Condition(label=1)
    generic = ImageClassifierVerifier(model=str(dino_dir)).score(images, condition)
    assert torch.equal(dino.score(images, condition), generic)


def test_label_map_by_names_by_indices_and_by_json_keys_choose_the_same_classes(
    vit_dir: Path, vit: ImageClassifierVerifier
) -> None:
    images = smooth_images(3, 8, 8)
    log_probs = vit.log_probs(images)
    maps: list[Any] = [
        ["nine", "Eight", "seven"],  # list indexed by run label, names case-insensitive
        [9, 8, 7],
        {"0": "nine", "1": 8, "2": "7"},  # keys as JSON gives them
    ]
    for label_map in maps:
        verifier = ImageClassifierVerifier(model=str(vit_dir), label_map=label_map)
        for run_label, model_class in enumerate((9, 8, 7)):
            scores = verifier.score(images, Condition(label=run_label))
            assert torch.allclose(scores, log_probs[:, model_class], atol=1e-6)


def test_imagenet_synonyms_resolve_and_misspelt_names_are_refused_before_weights_load(
    dino_dir: Path,
) -> None:
    verifier = DinoVerifier(model=str(dino_dir), label_map=["goldfish", "Tinca tinca", "TIGER SHARK"])
    assert verifier.label_map == {0: 1, 1: 0, 2: 3}
    with pytest.raises(ValueError, match="Did you mean: goldfish"):
        DinoVerifier(model=str(dino_dir), label_map=["goldfsh"])
    with pytest.raises(ValueError, match="ambiguous"):
        DinoVerifier(model=str(dino_dir), label_map=["crane"])


def test_a_label_outside_the_model_or_the_map_is_an_error_that_names_label_map(
    dino_dir: Path, dino: DinoVerifier
) -> None:
    images = smooth_images(1, 16, 16)
    with pytest.raises(ValueError, match="label_map"):
        dino.score(images, Condition(label=7))
    with pytest.raises(ValueError, match="not in label_map"):
        DinoVerifier(model=str(dino_dir), label_map=[4]).score(images, Condition(label=1))


def test_predict_answers_in_run_labels_among_the_mapped_classes(
    vit_dir: Path, vit: ImageClassifierVerifier
) -> None:
    images = smooth_images(5, 8, 8, seed=3)
    log_probs = vit.log_probs(images)
    reversed_digits = DIGIT_NAMES[::-1]  # run label r means the model's class 9 - r
    predicted = ImageClassifierVerifier(model=str(vit_dir), label_map=reversed_digits).predict(images)
    assert torch.equal(predicted, 9 - log_probs.argmax(dim=1))
    two_classes = ImageClassifierVerifier(model=str(vit_dir), label_map={"0": "four", "1": "six"})
    expected = (log_probs[:, 6] > log_probs[:, 4]).long()
    assert torch.equal(two_classes.predict(images), expected)


def test_dino_refuses_a_model_that_is_not_dinov2_and_points_to_classifier(vit_dir: Path) -> None:
    with pytest.raises(ValueError, match="verifier `classifier`"):
        DinoVerifier(model=str(vit_dir))


def test_half_precision_scores_stay_close_to_float32(dino_dir: Path, dino: DinoVerifier) -> None:
    images = smooth_images(2, 16, 16)
    full = dino.score(images, Condition(label=0))
    half = DinoVerifier(model=str(dino_dir), dtype="bfloat16").score(images, Condition(label=0))
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, atol=0.1)
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        DinoVerifier(model=str(dino_dir), dtype="float8")


# -- in a search ---------------------------------------------------------------------------------


def test_classifier_scores_a_digits_search_and_judges_it(vit_dir: Path) -> None:
    options = {"model": str(vit_dir), "label_map": DIGIT_NAMES}
    result = noisesearch.search(
        model="digits", label=3, candidates=4, steps=4, write=False,
        verifiers=["classifier"], evaluator="classifier", verifier_options={"classifier": options},
    )
    assert result.usage.candidates == 4
    assert result.best.objective == max(c.objective for c in result.top)
    assert result.verdicts["evaluator"] == "classifier"
    assert result.verdicts["best_predicted"] in range(10)


class TextToImageStandIn:
    """A text-conditioned model as the planner sees it: traits only, never built."""

    conditioning = "prompt"

    def __init__(self) -> None:
        raise AssertionError("the plan must refuse the run before building the model")


@pytest.mark.parametrize(("model", "condition"), [("gaussian", {}), ("text", {"prompt": "a red apple"})])
def test_label_verifiers_are_refused_for_models_without_labels_before_anything_loads(
    model: str, condition: dict[str, str]
) -> None:
    registries = build_registries()
    registries.models.add("gaussian", GaussianModel, "tests")
    registries.models.add("text", TextToImageStandIn, "tests")
    for name in ("dino", "classifier"):
        with pytest.raises(IncompatibleError, match=f"verifier {name!r} needs a label"):
            noisesearch.search(
                model=model, verifiers=[name], registries=registries, write=False, **condition,
                verifier_options={name: {"model": "no/such-model-is-ever-loaded"}},
            )
