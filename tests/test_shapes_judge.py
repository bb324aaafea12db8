"""The shapes judge: exact on renders, robust to blur, GenEval-style clauses, as a verifier."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from noisesearch import Condition
from noisesearch.testing import VerifierContract
from noisesearch_builtin.shapes import judge as judge_module
from noisesearch_builtin.shapes.grammar import (
    PromptError,
    load_suite,
    parse_prompt,
    sample_prompt,
    sample_scene,
)
from noisesearch_builtin.shapes.judge import detect, judge
from noisesearch_builtin.shapes.world import BACKGROUND, Obj, Scene, render
from noisesearch_builtin.verifiers.shapes_judge import ShapesJudge


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, 3) image, edges extended (not the judge's code)."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(3)],
                        mode="edge")  # fmt: skip
        n = out.shape[axis]
        out = sum(t * np.take(padded, range(i, i + n), axis=axis) for i, t in enumerate(taps))
    return out


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A decoder-like degradation: Gaussian blur (sigma 0.3-1.2 px) and pixel noise."""
    blurred = _blur(image, rng.uniform(0.3, 1.2)) + rng.normal(0, 6, image.shape)
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def _down_up(image: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks, then upsample by repetition and blur lightly (a VAE's smear)."""
    small = image.astype(np.float64).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    up = small.repeat(2, axis=0).repeat(2, axis=1)
    return np.clip(np.rint(_blur(up, 0.5)), 0, 255).astype(np.uint8)


def _accuracy(n: int, seed: int, degrade: Any = None) -> float:
    rng = np.random.default_rng(seed)
    exact = 0
    for _ in range(n):
        prompt = sample_prompt(rng)
        image = render(sample_scene(prompt, rng))
        if degrade is not None:
            image = degrade(image, rng)
        exact += judge(image, prompt).exact
    return exact / n


def test_exact_on_a_thousand_fresh_renders() -> None:
    assert _accuracy(1000, seed=2026) >= 0.99


def test_robust_to_blur_and_noise() -> None:
    assert _accuracy(200, seed=7, degrade=_degrade) >= 0.97


def test_robust_to_a_downsample_upsample() -> None:
    assert _accuracy(200, seed=8, degrade=lambda image, rng: _down_up(image)) >= 0.95


def test_every_sampled_scene_satisfies_its_prompt() -> None:
    rng = np.random.default_rng(11)
    for category in ("single_object", "two_object", "counting", "colors", "position", "color_attr"):
        for _ in range(20):
            prompt = sample_prompt(rng, category)
            verdict = judge(render(sample_scene(prompt, rng)), prompt)
            assert verdict.exact and verdict.fraction == 1.0, (prompt.text, verdict)


def test_suite_prompts_are_judged_satisfied_by_their_scenes() -> None:
    rng = np.random.default_rng(12)
    for prompt in load_suite()[::5]:
        assert judge(render(sample_scene(prompt, rng)), prompt.text).exact, prompt.text


def test_detect_reads_back_shape_colour_size_and_position() -> None:
    scene = Scene((
        Obj("star", "purple", "small", 6.0, 7.5),
        Obj("triangle", "cyan", "large", 23.25, 9.0),
        Obj("square", "yellow", "small", 8.5, 24.0),
        Obj("circle", "green", "large", 22.0, 23.5),
    ))  # fmt: skip
    found = detect(render(scene))
    assert [(d.shape, d.colour, d.size) for d in found] == [
        ("star", "purple", "small"),
        ("square", "yellow", "small"),
        ("circle", "green", "large"),
        ("triangle", "cyan", "large"),
    ]  # sorted by x
    for d, obj in zip(found, [scene.objects[i] for i in (0, 2, 3, 1)], strict=True):
        assert d.cx == pytest.approx(obj.cx, abs=0.3) and d.cy == pytest.approx(obj.cy, abs=0.3)


def test_clauses_fail_one_by_one() -> None:
    prompt = parse_prompt("a red circle left of a blue square")
    left = Obj("circle", "red", "large", 8.0, 16.0)
    right = Obj("square", "blue", "large", 24.0, 16.0)
    assert judge(render(Scene((left, right))), prompt).exact

    swapped = Scene((Obj("circle", "red", "large", 24.0, 16.0), Obj("square", "blue", "large", 8.0, 16.0)))
    verdict = judge(render(swapped), prompt)
    assert verdict.clauses == [
        ("a red circle", True),
        ("a blue square", True),
        ("a red circle left of a blue square", False),
        ("nothing else", True),
    ]
    assert verdict.fraction == pytest.approx(0.75) and not verdict.exact

    wrong_colour = Scene((Obj("circle", "green", "large", 8.0, 16.0), right))
    verdict = judge(render(wrong_colour), prompt)
    assert [ok for _, ok in verdict.clauses] == [False, True, False, False]

    extra = Scene((left, right, Obj("star", "red", "small", 16.0, 4.0)))
    assert [ok for _, ok in judge(render(extra), prompt).clauses] == [True, True, True, False]


def test_counts_are_exact() -> None:
    prompt = parse_prompt("three stars")
    stars = [Obj("star", "red", "small", x, 16.0) for x in (5.0, 16.0, 27.0)]
    assert judge(render(Scene(tuple(stars))), prompt).exact
    assert not judge(render(Scene(tuple(stars[:2]))), prompt).exact
    assert judge(render(Scene(())), prompt).fraction == pytest.approx(0.5)  # "nothing else" holds


def test_specks_and_plain_background_are_not_objects() -> None:
    image = np.empty((32, 32, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    assert detect(image) == []
    image[3:5, 3:5] = (230, 40, 40)  # a 4-pixel speck
    assert detect(image) == []


def test_larger_images_are_judged_at_the_world_size() -> None:
    prompt = parse_prompt("a yellow triangle above a green star")
    image = render(sample_scene(prompt, np.random.default_rng(3)))
    big = image.repeat(4, axis=0).repeat(4, axis=1)  # (128, 128, 3) nearest-neighbour upscale
    assert judge(big, prompt).exact
    assert judge(big.astype(np.float32) / 255, prompt).exact


def test_bad_prompts_are_refused() -> None:
    image = render(Scene(()))
    with pytest.raises(PromptError, match="empty"):
        judge(image, "")
    with pytest.raises(PromptError, match="'circle'"):
        judge(image, "a red circel")
    with pytest.raises(PromptError, match="1 to 4"):
        judge(image, "five red circles")


# -- the verifier -----------------------------------------------------------------------------


def test_verifier_scores_fraction_or_exact() -> None:
    import torch

    prompt = "two red circles and a blue square"
    rng = np.random.default_rng(4)
    good = render(sample_scene(parse_prompt(prompt), rng))
    bad = render(sample_scene(parse_prompt("two red circles"), rng))
    images = torch.from_numpy(np.stack([good, bad])).permute(0, 3, 1, 2).float() / 255
    condition = Condition(prompt=prompt)
    assert ShapesJudge().score(images, condition).tolist() == pytest.approx([1.0, 2 / 3])
    assert ShapesJudge(exact=True).score(images, condition).tolist() == [1.0, 0.0]
    verdicts = ShapesJudge().verdicts(images, condition)
    assert verdicts[1].clauses[1] == ("a blue square", False)


def test_verifier_refuses_a_missing_or_foreign_prompt() -> None:
    import torch

    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="needs a prompt"):
        ShapesJudge().score(images, Condition(label=3))
    with pytest.raises(PromptError, match="vocabulary"):
        ShapesJudge().score(images, Condition(prompt="a photo of a cat"))


class TestShapesJudgeContract(VerifierContract):
    verifier_factory = ShapesJudge
    registered_name = "shapes-judge"
    image_shape: ClassVar[tuple[int, int, int]] = (3, 32, 32)

    def make_condition(self, verifier: Any) -> Condition:
        return Condition(prompt="a yellow triangle above a green star")


def test_module_has_no_torch_at_import() -> None:
    assert "torch" not in vars(judge_module)
