"""The CLIP verifiers on a transformers ``CLIPModel`` folder (the layout of the shipped ``shapes``
CLIP): one loading path (``clip_backbone.load_clip``) for open_clip and transformers CLIPs.

A tiny random-weight ``CLIPModel`` is saved with ``save_pretrained`` and loaded back through the
verifiers' options; numbers are checked against transformers' own public API (the PIL image
processor, ``get_image_features`` / ``get_text_features``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from clip_tiny import TINY_EMBED_DIM, TINY_IMAGE_SIZE, save_aesthetic_mlp, save_tiny_transformers_clip
from torchvision.transforms.functional import to_pil_image

from noisesearch import Condition
from noisesearch.plugins import build_registries
from noisesearch.testing import VerifierContract
from noisesearch_builtin.verifiers import clip_backbone
from noisesearch_builtin.verifiers.aesthetic import AestheticPredictor
from noisesearch_builtin.verifiers.clip_score import ClipScore, ShapesClip
from noisesearch_builtin.verifiers.clip_zeroshot import ClipZeroShot

PROMPT = "a photograph of a red apple on a wooden table"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_transformers_clip(tmp_path_factory.mktemp("hf-clip") / "clip")


@pytest.fixture
def fresh_cache() -> None:
    clip_backbone.clear_cache()
    yield
    clip_backbone.clear_cache()


def quantised_images(n: int, height: int = TINY_IMAGE_SIZE, width: int = TINY_IMAGE_SIZE) -> torch.Tensor:
    """Images that survive a round trip through 8-bit PIL exactly."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, height, width), generator=generator).float() / 255


def by_hand(folder: Path, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image (B, D) and text (N, D) embeddings straight from transformers."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPImageProcessor.from_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    pixels = processor(images=[to_pil_image(image) for image in images], return_tensors="pt").pixel_values
    tokens = tokenizer(texts, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(**tokens)
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


class TestTransformersClipScoreContract(VerifierContract):
    verifier_factory = ClipScore
    registered_name = "clip-score"
    image_shape = (3, 24, 40)  # not the model's size, not square: preprocessing has work to do

    @pytest.fixture(autouse=True)
    def _folder(self, folder: Path) -> None:
        self.folder = folder

    @property
    def verifier_options(self) -> dict[str, Any]:
        return {"model": str(self.folder), "device": "cpu"}


def test_clip_score_is_the_cosine_transformers_gives_by_hand(folder: Path, fresh_cache: None) -> None:
    images = quantised_images(3)
    image, text = by_hand(folder, images, [PROMPT])
    scores = ClipScore(model=str(folder), device="cpu").score(images, Condition(prompt=PROMPT))
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, image @ text[0], atol=1e-5, rtol=1e-5)


def test_a_folder_saved_as_one_clip_processor_loads_its_image_settings(
    tmp_path: Path, fresh_cache: None
) -> None:
    folder = save_tiny_transformers_clip(tmp_path / "clip", seed=1, as_processor=True)
    images = quantised_images(2)
    backbone = clip_backbone.load_clip(str(folder), None, "cpu", "float32")
    torch.testing.assert_close(backbone.preprocess(images), images * 2 - 1)  # mean = std = 0.5
    image, text = by_hand(folder, images, [PROMPT])
    scores = ClipScore(model=str(folder), device="cpu").score(images, Condition(prompt=PROMPT))
    torch.testing.assert_close(scores, image @ text[0], atol=1e-5, rtol=1e-5)


def test_images_of_another_size_are_resized_and_cropped_like_the_image_processor(
    folder: Path, fresh_cache: None
) -> None:
    from transformers import CLIPImageProcessor

    images = quantised_images(2, height=48, width=80)  # short side 48 -> 32, then a 32x32 centre crop
    backbone = clip_backbone.load_clip(str(folder), None, "cpu", "float32")
    pixels = backbone.preprocess(images)
    assert pixels.shape == (2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    processor = CLIPImageProcessor.from_pretrained(folder)
    expected = processor(images=[to_pil_image(i) for i in images], return_tensors="pt").pixel_values
    # PIL resizes 8-bit images and rounds; the tensor path does not: close, not identical.
    assert (pixels - expected).abs().mean() < 0.02
    assert (pixels - expected).abs().max() < 0.3


def test_shapes_clip_is_clip_score_over_a_clip_folder_sharing_one_model(
    folder: Path, fresh_cache: None
) -> None:
    entry = build_registries().verifiers.get("shapes-clip")
    assert entry.factory is ShapesClip
    loads = clip_backbone.load_count()
    shapes = entry.create(model=str(folder), device="cpu")
    plain = ClipScore(model=f"transformers:{folder}", device="cpu")  # the default tag is ignored
    assert clip_backbone.load_count() == loads + 1
    assert shapes.backbone is plain.backbone
    images = quantised_images(2)
    condition = Condition(prompt=PROMPT)
    torch.testing.assert_close(shapes.score(images, condition), plain.score(images, condition))


def test_a_pretrained_tag_or_file_on_a_transformers_folder_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="weights are in its folder"):
        ClipScore(model=str(folder), pretrained="laion2b_s32b_b82k", device="cpu")


def test_zero_shot_and_aesthetic_run_on_a_transformers_clip(
    folder: Path, tmp_path: Path, fresh_cache: None
) -> None:
    classes, templates = ["dog", "cat", "car"], ["a photo of a {}.", "a drawing of the {}."]
    images = quantised_images(2)
    image, text = by_hand(folder, images, [t.format(c) for c in classes for t in templates])
    weights = F.normalize(text.view(3, 2, -1).mean(dim=1), dim=-1)  # (classes, D)
    zeroshot = ClipZeroShot(model=str(folder), class_names=classes, templates=templates, device="cpu")
    scale = zeroshot.backbone.logit_scale()
    torch.testing.assert_close(
        zeroshot.score(images, Condition(label=1)), scale * image @ weights[1], atol=1e-4, rtol=1e-5
    )
    mlp = save_aesthetic_mlp(tmp_path / "mlp.pth", input_size=TINY_EMBED_DIM)
    aesthetic = AestheticPredictor(model=str(folder), weights=str(tmp_path / "mlp.pth"), device="cpu")
    with torch.no_grad():
        expected = mlp(F.normalize(image, dim=-1))[:, 0]
    torch.testing.assert_close(aesthetic.score(images, Condition()), expected, atol=1e-5, rtol=1e-5)
