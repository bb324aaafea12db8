"""The local judge on tiny vision-language models built from configs, loaded like real ones.

Random weights: with the score grammar enforced every reply is a score; without it the replies
are words, which exercises the retry and the counted failures on a real ``generate``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import noisesearch
import pytest
import torch
from noisesearch import Condition
from noisesearch.errors import ConfigError
from noisesearch.testing import VerifierContract, seconds_without_hub

from noisesearch_vlm.judging import to_pil
from noisesearch_vlm.local import SUPPORTED, NotAVisionLanguageModel, VLMJudge
from noisesearch_vlm.rubric import parse_score, rubric_prompt

sys.path.insert(0, str(Path(__file__).parent))
import vlm_tiny  # noqa: E402

PROMPT = "a red apple on the table"
SHAPES_PROMPT = "a red circle above a blue square"  # in the shapes world's vocabulary


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vlm")
    buildable = {name: build for name, build in vlm_tiny.BUILDERS.items() if vlm_tiny.missing(name) is None}
    return {name: build(root / name) for name, build in buildable.items()}


@pytest.fixture(scope="session")
def judge(folders: dict[str, Path]) -> VLMJudge:
    return VLMJudge(model=str(folders["idefics3"]))


@pytest.fixture(scope="session")
def free_judge(folders: dict[str, Path]) -> VLMJudge:
    """Unconstrained: a random model writes words, never exactly a score."""
    return VLMJudge(model=str(folders["qwen2_vl"]), constrain=False, max_new_tokens=3)


def images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 40, 36, generator=torch.Generator().manual_seed(seed))  # (B, 3, H, W)


class TestVLMJudgeContract(VerifierContract):
    verifier_factory = VLMJudge
    registered_name = "vlm"
    image_shape = (3, 40, 36)
    batch = 3

    @pytest.fixture(autouse=True)
    def _tiny(self, folders: dict[str, Path], judge: VLMJudge) -> None:
        self.verifier_options = {"model": str(folders["idefics3"])}
        self.built = judge

    def make_verifier(self) -> VLMJudge:
        return self.built


class TestUnconstrainedVLMJudgeContract(TestVLMJudgeContract):
    """Every reply unreadable: the contract accepts the NaNs because each is a counted failure."""

    verifier_options: ClassVar[dict[str, Any]] = {}

    @pytest.fixture(autouse=True)
    def _tiny(self, folders: dict[str, Path], free_judge: VLMJudge) -> None:
        self.built = free_judge


@pytest.mark.parametrize("family", sorted(vlm_tiny.BUILDERS))
def test_each_family_loads_through_the_auto_classes_and_replies_with_a_score(
    family: str, folders: dict[str, Path]
) -> None:
    if family not in folders:
        pytest.skip(vlm_tiny.missing(family))
    judge = VLMJudge(model=str(folders[family]), metric="accuracy")
    assert type(judge.model).__name__ in " ".join(SUPPORTED)
    scores = judge.score(images(), Condition(prompt=PROMPT))
    cost = judge.take_cost()
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert all(float(s).is_integer() and 0 <= s <= 10 for s in scores)
    assert cost["requests"] == 1 and cost["retries"] == cost["failures"] == 0
    # A score token and the end of the reply, for each of the three images.
    assert cost["tokens_out"] == 3 * 2
    question = {"type": "text", "text": rubric_prompt(PROMPT, "accuracy")}
    text = judge.processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, question]}],
                                               add_generation_prompt=True, tokenize=False)
    single = judge.processor(text=[text], images=[to_pil(images(1))], return_tensors="pt")
    assert cost["tokens_in"] == 3 * single["input_ids"].shape[1]  # no padding counted
    assert judge.take_cost()["tokens_in"] == 0  # taken once


def test_batched_generation_gives_the_replies_of_one_by_one(free_judge: VLMJudge) -> None:
    pictures = to_pil(images(4, seed=3))
    question = rubric_prompt(PROMPT)
    free_judge.take_cost()
    together = free_judge.ask(pictures, question, None)
    alone = [free_judge.ask([p], question, None)[0] for p in pictures]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.tokens_in for r in together] == [r.tokens_in for r in alone]
    assert free_judge.take_cost()["requests"] == 1 + 4


def test_unreadable_replies_are_asked_again_once_then_score_nan_as_counted_failures(
    free_judge: VLMJudge,
) -> None:
    free_judge.take_cost()
    pictures = images(3, seed=1)
    first = free_judge.ask(to_pil(pictures), rubric_prompt(PROMPT), None)
    assert all(parse_score(r.text) is None for r in first), [r.text for r in first]  # words
    free_judge.take_cost()
    scores = free_judge.score(pictures, Condition(prompt=PROMPT))
    cost = free_judge.take_cost()
    assert torch.isnan(scores).all()
    assert cost["requests"] == 2 and cost["retries"] == 3 and cost["failures"] == 3
    # The second question quotes the reply and restates the format: longer than the first.
    assert cost["tokens_in"] > 2 * sum(r.tokens_in for r in first)


def test_a_batch_size_below_the_images_generates_in_chunks(folders: dict[str, Path]) -> None:
    judge = VLMJudge(model=str(folders["qwen2_vl"]), batch_size=2)
    chunked = judge.score(images(3), Condition(prompt=PROMPT))
    assert judge.take_cost()["requests"] == 2
    judge.batch_size = 8
    assert torch.equal(judge.score(images(3), Condition(prompt=PROMPT)), chunked)
    assert judge.take_cost()["requests"] == 1


# -- bad input ---------------------------------------------------------------------------------


def test_too_few_tokens_for_a_constrained_ten_are_refused_before_loading() -> None:
    with pytest.raises(ValueError, match="max_new_tokens must be at least 3 with constrain=True, got 2"):
        VLMJudge(model="/nonexistent", max_new_tokens=2)


def test_a_folder_that_is_not_a_vision_language_model_is_refused_naming_the_supported_classes(
    tmp_path: Path,
) -> None:
    from transformers import LlamaConfig

    llm = LlamaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    llm.save_pretrained(tmp_path / "llm")
    (tmp_path / "empty").mkdir()
    refusals = {"llm": "holds a 'llama' model", "empty": "without a transformers"}
    for folder, what in ((tmp_path / name, refusal) for name, refusal in refusals.items()):
        with pytest.raises(NotAVisionLanguageModel, match=what) as caught:
            VLMJudge(model=str(folder))
        assert "Qwen2VLForConditionalGeneration" in str(caught.value)
        assert "Idefics3ForConditionalGeneration" in str(caught.value)


def test_a_bad_folder_or_metric_is_refused_while_planning_before_the_model_loads(tmp_path: Path) -> None:
    output = tmp_path / "run"
    with pytest.raises(ConfigError, match="verifier vlm: .*SmolVLMForConditionalGeneration"):
        noisesearch.search(model="shapes", prompt=SHAPES_PROMPT, verifiers=["vlm"], output=str(output),
                           verifier_options={"vlm": {"model": str(tmp_path)}})
    with pytest.raises(ConfigError, match="metric 'beauty'.*overall"):
        noisesearch.search(model="shapes", prompt=SHAPES_PROMPT, verifiers=["vlm"], output=str(output),
                           verifier_options={"vlm": {"metric": "beauty"}})
    assert not output.exists()



@pytest.mark.parametrize("value", ["{tmp}/nonexistent", "./nonexistent", "~/nonexistent-vlm", "{tmp}/a/b/c"])
def test_a_path_that_does_not_exist_is_refused_naming_the_option(tmp_path: Path, value: str) -> None:
    value = value.format(tmp=tmp_path)
    refusal = rf"^vlm\.model: '{re.escape(value)}' is no file or folder$"
    with pytest.raises(ConfigError, match=refusal):
        VLMJudge.describe(model=value)
    with pytest.raises(ConfigError, match=refusal):
        VLMJudge(model=value)


def test_a_hub_id_not_in_the_cache_while_offline_is_refused_with_the_download_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    refusal = (r"^vlm\.model: 'Qwen/Qwen2\.5-VL-3B-Instruct' .*config\.json is not in the local hub cache "
               r"while HF_HUB_OFFLINE=1\. .*`hf download Qwen/Qwen2\.5-VL-3B-Instruct`.*vlm\.model=PATH")
    with pytest.raises(ConfigError, match=refusal):
        VLMJudge.describe()
    with pytest.raises(ConfigError, match=refusal):
        VLMJudge()


def test_a_missing_model_is_refused_while_planning_before_the_model_loads(tmp_path: Path) -> None:
    output = tmp_path / "run"
    with pytest.raises(ConfigError, match="vlm.model: .* is no file or folder"):
        noisesearch.search(model="shapes", prompt=SHAPES_PROMPT, verifiers=["vlm"], output=str(output),
                           verifier_options={"vlm": {"model": str(tmp_path / "nonexistent")}})
    assert not output.exists()


@pytest.mark.slow  # a fresh interpreter, where the hub's address can be set before huggingface_hub loads
def test_a_cached_hub_id_loads_from_the_cache_at_once_when_the_hub_cannot_be_reached(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """No HF_HUB_OFFLINE and no network: the cached model loads without waiting for
    huggingface_hub's retries of the optional files (about 25 s each)."""
    commit = "0" * 40
    repo = tmp_path / "hub-cache" / "models--someone--tiny-vlm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    shutil.copytree(folders["idefics3"], repo / "snapshots" / commit)
    seconds = seconds_without_hub("from noisesearch_vlm.local import VLMJudge",
                                  "VLMJudge(model='someone/tiny-vlm')", tmp_path / "hub-cache")
    assert seconds < 15


@pytest.mark.slow  # a fresh interpreter imports torch and the plugins
def test_the_cli_says_it_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from noisesearch.console import main; main()", "run", "--model", "shapes",
         "--prompt", SHAPES_PROMPT, "--verifier", "vlm", "--verifier-opt", f"vlm.model={tmp_path}",
         "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "not a vision-language model" in done.stderr
    assert not (tmp_path / "run").exists()


# -- cost in the run folder --------------------------------------------------------------------


@pytest.mark.slow  # the shapes model imports diffusers
def test_tokens_and_seconds_are_added_to_the_runs_verifier_cost(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    result = noisesearch.search(
        model="shapes", prompt=SHAPES_PROMPT, candidates=2, steps=1, verifiers=["vlm"], evaluator="none",
        verifier_options={"vlm": {"model": str(folders["qwen2_vl"])}}, output=str(tmp_path / "run"),
    )
    usage = json.loads((tmp_path / "run" / "run.json").read_text())["usage"]
    cost = usage["verifier_cost"]["vlm"]
    assert cost["requests"] == usage["verifier_calls"] == 1
    assert cost["tokens_out"] == 2 * 2 and cost["failures"] == 0
    assert cost["tokens_in"] > 0 and 0 < cost["seconds"] <= usage["verifier_seconds"] + 1e-4
    assert result.usage.verifier_cost["vlm"]["tokens_in"] == cost["tokens_in"]
