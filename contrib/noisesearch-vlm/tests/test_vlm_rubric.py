"""The rubric's wording per criterion, and the strict reading of a judge's reply."""

from __future__ import annotations

import pytest

from noisesearch_vlm.judging import QUOTED_REPLY_CHARS, conversation
from noisesearch_vlm.rubric import CRITERIA, METRICS, RETRY, check_metric, parse_score, rubric_prompt


@pytest.mark.parametrize("reply, score", [
    ("7", 7), ("0", 0), ("10", 10), (" 9\n", 9), ('{"score": 3}', 3), ('  {"score":10} ', 10),
])
def test_a_score_alone_or_a_score_object_is_read(reply: str, score: int) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply", [
    None, "", " ", "11", "-1", "07", "7.5", "7/10", "Score: 7", "7 because it is red", "seven", "1 0",
    '{"score": 7.0}', '{"score": "7"}', '{"score": true}', '{"score": 11}', '{"score": 7, "why": "red"}',
    '{"overall": 7}', "[7]", '```json\n{"score": 7}\n```', "NaN",
])
def test_anything_else_is_unreadable(reply: str | None) -> None:
    assert parse_score(reply) is None


def test_the_six_criteria_are_the_papers() -> None:
    assert METRICS == ("accuracy", "creativity", "quality", "consistency", "resonance", "overall")
    titles = [CRITERIA[m][0] for m in METRICS]
    assert titles == ["accuracy to the prompt", "creativity and originality", "visual quality and realism",
                      "consistency and cohesion", "emotional or thematic resonance", "overall"]


def test_overall_lists_the_five_criteria_and_one_criterion_names_only_itself() -> None:
    overall = rubric_prompt("a red apple", "overall")
    assert '"a red apple"' in overall and "single integer from 0 to 10" in overall
    assert all(CRITERIA[m][0] in overall for m in METRICS[:-1])
    quality = rubric_prompt("a red apple", "quality")
    assert "visual quality and realism" in quality and "creativity" not in quality
    assert len({rubric_prompt("a red apple", m) for m in METRICS}) == len(METRICS)


def test_an_unknown_metric_is_refused_naming_the_criteria() -> None:
    assert check_metric("resonance") == "resonance"
    with pytest.raises(ValueError, match="accuracy, creativity, quality, consistency, resonance, overall"):
        rubric_prompt("a red apple", "beauty")


def test_asking_again_quotes_the_unreadable_reply_and_restates_the_format() -> None:
    image = {"type": "image"}
    first = conversation("How good?", None, image)
    assert first == [{"role": "user", "content": [image, {"type": "text", "text": "How good?"}]}]
    again = conversation("How good?", "x" * 1000, image)
    assert [m["role"] for m in again] == ["user", "assistant", "user"]
    assert again[1]["content"][0]["text"] == "x" * QUOTED_REPLY_CHARS
    assert again[2]["content"][0]["text"] == RETRY
