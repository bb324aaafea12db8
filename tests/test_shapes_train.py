"""The `shapes` training script and the shipped pipeline, through plain diffusers/transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from noisesearch_builtin.shapes import CLIP_DIR, PIPELINE_DIR
from noisesearch_builtin.shapes import train as shapes_train
from noisesearch_builtin.shapes.grammar import VOCABULARY, parse_prompt


def _sample(folder: Path, prompts: list[str], steps: int = 2) -> np.ndarray:
    import torch
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipeline(prompts, num_inference_steps=steps, guidance_scale=3.0, generator=generator,
                    output_type="np").images  # fmt: skip


def test_tokenizer_keeps_every_world_word_whole(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from noisesearch_builtin.shapes.networks import MAX_TOKENS, build_tokenizer

    build_tokenizer(VOCABULARY).save_pretrained(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    for word in sorted(VOCABULARY):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(word).input_ids)
        assert tokens == ["<|startoftext|>", f"{word}</w>", "<|endoftext|>"], word
    ids = tokenizer("Two  RED circles", padding="max_length", max_length=MAX_TOKENS).input_ids
    assert len(ids) == MAX_TOKENS
    assert tokenizer.decode(ids, skip_special_tokens=True) == "two red circles"
    # text outside the vocabulary still tokenizes (into byte symbols), it does not fail
    assert len(tokenizer("zebra").input_ids) > 3


def test_hard_negative_changes_one_word_and_stays_in_the_grammar() -> None:
    rng = np.random.default_rng(0)
    for caption in ["a red circle left of a blue star", "three small triangles", "a cyan square"]:
        for _ in range(20):
            negative = shapes_train.hard_negative(caption, rng)
            changed = [a != b for a, b in zip(caption.split(), negative.split(), strict=True)]
            assert sum(changed) == 1
            parse_prompt(negative)


@pytest.mark.slow
def test_every_stage_runs_and_plain_libraries_load_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import CLIPModel, CLIPProcessor

    for name in ("VAE_BATCH", "UNET_BATCH", "CLIP_BATCH"):
        monkeypatch.setattr(shapes_train, name, 4)
    monkeypatch.setattr(shapes_train, "VAE_TEST_SCENES", 8)
    metrics = shapes_train.run(shapes_train.STAGES, tmp_path, steps=2, scenes=16,
                               checkpoints=tmp_path / "ck", every=1, log=lambda _: None)  # fmt: skip
    assert metrics["unet_steps"] == 2 and metrics["decoder_steps"] == 2
    assert metrics["vae_scaling_factor"] > 0
    assert (tmp_path / "ck" / "step-000001" / "model_index.json").is_file()

    images = _sample(tmp_path / "pipeline", ["a red circle", "two stars"])
    assert images.shape == (2, 32, 32, 3)

    model = CLIPModel.from_pretrained(tmp_path / "clip")
    processor = CLIPProcessor.from_pretrained(tmp_path / "clip")
    batch = processor(text=["a red circle", "two stars"], images=list((images * 255).astype(np.uint8)),
                      return_tensors="pt", padding=True)  # fmt: skip
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert model(**batch).logits_per_image.shape == (2, 2)


def test_train_rejects_bad_steps(capsys: pytest.CaptureFixture[str]) -> None:
    assert shapes_train.main(["--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_the_shipped_pipeline_loads_with_plain_diffusers_and_samples() -> None:
    images = _sample(PIPELINE_DIR, ["a red circle left of a blue square"])
    assert images.shape == (1, 32, 32, 3)
    assert np.isfinite(images).all()


def test_the_shipped_clip_loads_with_plain_transformers() -> None:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(CLIP_DIR)
    processor = CLIPProcessor.from_pretrained(CLIP_DIR)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    batch = processor(text=["a circle"], images=[image], return_tensors="pt", padding=True)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert model(**batch).logits_per_image.shape == (1, 1)
