"""The judge's rubric and the strict reading of its reply.

The six criteria follow the grader rubric of Ma et al. 2025 (its Fig. 16: five aspects scored 0
to 10, then an overall score), in our own words. A judge is asked about one criterion, chosen
by ``metric``, and must reply with one integer from 0 to 10; :func:`parse_score` accepts that
integer, or a JSON object ``{"score": N}``, and nothing else.
"""

from __future__ import annotations

import json
import re

#: metric name -> (title, what the judge should look at).
CRITERIA: dict[str, tuple[str, str]] = {
    "accuracy": (
        "accuracy to the prompt",
        "does the image show what the prompt asks for: every object, attribute, number, relation "
        "and style it names, and nothing that contradicts it?",
    ),
    "creativity": (
        "creativity and originality",
        "is the image an inventive answer to the prompt (a composition, viewpoint or idea that "
        "is unexpected yet fitting) rather than its most generic rendering?",
    ),
    "quality": (
        "visual quality and realism",
        "is the image well made: sharp where it should be, with believable light, anatomy and "
        "perspective, and free of artefacts, smears and garbled text? Judge realism against "
        "the style the prompt asks for.",
    ),
    "consistency": (
        "consistency and cohesion",
        "do the parts of the image belong together: one style, one light, sizes that agree, "
        "objects that interact believably, nothing duplicated or broken?",
    ),
    "resonance": (
        "emotional or thematic resonance",
        "does the image carry the mood, feeling or theme the prompt implies, and leave an "
        "impression?",
    ),
    "overall": (
        "overall",
        "weighing the five criteria above together, how good is this image as an answer to the "
        "prompt?",
    ),
}
METRICS = tuple(CRITERIA)
LOWEST, HIGHEST = 0, 10

RETRY = (
    f"That reply could not be read as a score. Reply with a single integer from {LOWEST} to "
    f"{HIGHEST} and nothing else."
)

_INTEGER = re.compile(r"\s*(10|[0-9])\s*")


def check_metric(metric: str) -> str:
    """``metric`` if it names a criterion; else a ``ValueError`` listing them."""
    if metric not in CRITERIA:
        raise ValueError(
            f"metric {metric!r} is not a criterion of the rubric; choose one of {', '.join(METRICS)}"
        )
    return metric


def rubric_prompt(prompt: str, metric: str = "overall") -> str:
    """The question put to the judge about one image generated from ``prompt``."""
    title, question = CRITERIA[check_metric(metric)]
    lines = [
        "You are an expert judge of images made by text-to-image models.",
        f'The image was generated from this prompt: "{prompt}"',
        "",
    ]
    if metric == "overall":
        lines.append("Consider these five criteria:")
        for name in METRICS[:-1]:
            lines.append(f"- {CRITERIA[name][0]}: {CRITERIA[name][1]}")
        lines.append(f"Then give one overall score: {question}")
    else:
        lines.append(f"Judge one criterion only, {title}: {question}")
    lines += [
        "",
        f"Score on a scale from {LOWEST} (fails completely) to {HIGHEST} (could not be better).",
        f"Reply with the score alone: a single integer from {LOWEST} to {HIGHEST}, with no words, "
        "punctuation or explanation.",
    ]
    return "\n".join(lines)


def parse_score(reply: str | None) -> int | None:
    """The score in a judge's reply, or ``None`` when the reply is not exactly a score.

    Accepted: an integer from 0 to 10 alone (surrounding white space allowed), or a JSON object
    with the one key ``"score"`` holding such an integer. Anything else (words around the
    number, a decimal, a number out of range, markdown) is refused rather than guessed at.
    """
    if reply is None:
        return None
    match = _INTEGER.fullmatch(reply)
    if match:
        return int(match.group(1))
    try:
        data = json.loads(reply)
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != {"score"}:
        return None
    value = data["score"]
    if type(value) is not int or not LOWEST <= value <= HIGHEST:  # bool is not a score
        return None
    return value
