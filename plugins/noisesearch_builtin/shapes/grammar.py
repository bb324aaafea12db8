"""The captions of the `shapes` world: a small grammar in GenEval's six categories.

A prompt is one or more object phrases joined by "and" (``two red circles and a blue
square``), or two single objects joined by a relation (``a yellow triangle above a green
star``). A phrase is ``<count> [size] [colour] <shape>``. :func:`parse_prompt` inverts the
grammar and returns the canonical text, so a user's "One Circle." reaches the model as the
caption it was trained on ("a circle").

Two phrases never describe overlapping sets of objects ("a circle and a red circle" is
refused): each object in a scene then matches exactly one phrase, which makes the judge's
verdict exact.

The held-out suite ``prompts.txt`` is drawn with its own seed; :func:`training_pair` never
returns one of its captions, except the single-object ones (see :data:`SEEN_CATEGORIES`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from noisesearch_builtin.shapes.world import (
    BORDER,
    COLOURS,
    IMAGE_SIZE,
    MAX_COUNT,
    MAX_OBJECTS,
    SHAPES,
    SIZE_PIXELS,
    SIZES,
    Obj,
    Scene,
    fits,
    render,
    separated,
)

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
#: Categories whose suite prompts are also training captions: "single_object" has only
#: 4 shapes x 3 size options = 12 captions, and a model never shown "a circle" could not be
#: asked to draw one. The held-out test is the composition of seen words.
SEEN_CATEGORIES = frozenset({"single_object"})
SUITE_PATH = Path(__file__).parent / "prompts.txt"
SUITE_SEED = 20261130
#: Sampled scenes keep related objects at least this far apart along the relation's axis;
#: the judge accepts anything beyond ``judge.RELATION_MARGIN``.
RELATION_OFFSET = 5.0

NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
_COUNT_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "zero": 0, "no": 0,
}  # fmt: skip
_PLURALS = {shape + "s": shape for shape in SHAPES}
_RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}

#: Every word the grammar can produce or parse, lower-case.
VOCABULARY: frozenset[str] = frozenset(
    {"a", "an", "one", "two", "three", "four", "and", "of", "left", "right", "above", "below"}
    | set(SIZES)
    | set(COLOURS)
    | set(SHAPES)
    | set(_PLURALS)
)


class PromptError(ValueError):
    """A prompt outside the world's grammar; the message says how to fix it."""


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    count: int = 1
    colour: str | None = None
    size: str | None = None

    def text(self) -> str:
        words = [NUMBER_WORDS[self.count]]
        words += [w for w in (self.size, self.colour) if w is not None]
        words.append(self.shape + ("s" if self.count > 1 else ""))
        return " ".join(words)

    def matches(self, shape: str, colour: str, size: str) -> bool:
        """Whether one object with these attributes is described by this phrase."""
        return (
            shape == self.shape
            and self.colour in (None, colour)
            and self.size in (None, size)
        )

    def overlaps(self, other: ObjectSpec) -> bool:
        """Whether some object could match both phrases."""
        if self.shape != other.shape:
            return False
        differ = [
            a is not None and b is not None and a != b
            for a, b in ((self.colour, other.colour), (self.size, other.size))
        ]
        return not any(differ)


@dataclass(frozen=True)
class Relation:
    subject: int
    relation: str
    object: int


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str
    objects: tuple[ObjectSpec, ...]
    relations: tuple[Relation, ...] = field(default=())

    def clauses(self) -> list[str]:
        """What the judge checks: one clause per phrase, per relation, and "nothing else"."""
        clauses = [spec.text() for spec in self.objects]
        clauses += [
            f"{self.objects[r.subject].text()} {r.relation} {self.objects[r.object].text()}"
            for r in self.relations
        ]
        clauses.append("nothing else")
        return clauses


def category_of(objects: tuple[ObjectSpec, ...], relations: tuple[Relation, ...]) -> str:
    """The GenEval category a structure belongs to (size never changes it)."""
    if relations:
        return "position"
    if len(objects) == 1:
        (spec,) = objects
        if spec.count > 1:
            return "counting"
        return "colors" if spec.colour is not None else "single_object"
    if any(spec.colour is not None for spec in objects):
        return "color_attr"
    return "two_object"


def make_prompt(
    objects: tuple[ObjectSpec, ...], relations: tuple[Relation, ...] = ()
) -> Prompt:
    """A prompt with its canonical text and category, checked against the world's limits."""
    _check_structure(objects, relations)
    if relations:
        (rel,) = relations
        text = f"{objects[rel.subject].text()} {rel.relation} {objects[rel.object].text()}"
    else:
        text = " and ".join(spec.text() for spec in objects)
    return Prompt(text, category_of(objects, relations), objects, relations)


def _check_structure(objects: tuple[ObjectSpec, ...], relations: tuple[Relation, ...]) -> None:
    if not objects:
        raise PromptError("the prompt names no object; try e.g. 'a red circle'")
    for spec in objects:
        if not 1 <= spec.count <= MAX_COUNT:
            raise PromptError(
                f"count {spec.count} of {spec.shape}s is outside 1..{MAX_COUNT}: the shapes "
                f"world draws at most {MAX_COUNT} of a kind"
            )
    total = sum(spec.count for spec in objects)
    if total > MAX_OBJECTS:
        raise PromptError(
            f"the prompt asks for {total} objects; a shapes scene holds at most {MAX_OBJECTS}"
        )
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            if a.overlaps(b):
                raise PromptError(
                    f"'{a.text()}' and '{b.text()}' could describe the same object; give "
                    "them different colours or sizes, or merge them into one count"
                )
    for rel in relations:
        if len(objects) != 2 or len(relations) != 1:
            raise PromptError("a relation joins exactly two objects, e.g. 'a circle above a star'")
        if any(objects[i].count != 1 for i in (rel.subject, rel.object)):
            raise PromptError("a relation joins single objects ('a circle', not 'two circles')")


def _suggest(word: str) -> str:
    close = difflib.get_close_matches(word, sorted(VOCABULARY), n=3, cutoff=0.5)
    return f" (did you mean {' / '.join(repr(c) for c in close)}?)" if close else ""


def _words(text: str) -> list[str]:
    cleaned = re.sub(r"[.,;!?]", " ", text.lower())
    return cleaned.split()


def parse_prompt(text: str) -> Prompt:
    """The inverse of the grammar: the structured, canonical form of ``text``.

    :raises PromptError: for an empty prompt, words outside :data:`VOCABULARY` (listed, with
        the closest words), a count beyond ``MAX_COUNT``, or more than ``MAX_OBJECTS`` objects.
    """
    words = _words(text)
    if not words:
        raise PromptError("the prompt is empty; try e.g. 'two red circles and a blue square'")
    unknown = []
    for word in words:
        if word in VOCABULARY or word in _COUNT_WORDS or word.isdigit():
            continue
        unknown.append(f"{word!r}{_suggest(word)}")
    if unknown:
        raise PromptError(
            f"the shapes world does not know {', '.join(unknown)}. Its vocabulary: "
            f"{' '.join(sorted(VOCABULARY))}"
        )
    phrases: list[list[str]] = [[]]
    relation: str | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if word == "and":
            phrases.append([])
        elif word in _RELATION_WORDS:
            if relation is not None or len(phrases) != 1:
                raise PromptError("a prompt holds one relation between two objects")
            relation = _RELATION_WORDS[word]
            if relation.endswith(" of"):
                if i + 1 >= len(words) or words[i + 1] != "of":
                    raise PromptError(f"write '{relation}', as in 'a circle {relation} a star'")
                i += 1
            phrases.append([])
        elif word == "of":
            raise PromptError("'of' only follows 'left' or 'right'")
        else:
            phrases[-1].append(word)
        i += 1
    objects = tuple(_parse_phrase(p) for p in phrases)
    relations = (Relation(0, relation, 1),) if relation is not None else ()
    return make_prompt(objects, relations)


def _parse_phrase(words: list[str]) -> ObjectSpec:
    if not words:
        raise PromptError("an object is missing around 'and' or the relation")
    count, rest = 1, words
    first = words[0]
    if first in _COUNT_WORDS or first.isdigit():
        count = _COUNT_WORDS[first] if first in _COUNT_WORDS else int(first)
        rest = words[1:]
    if not 1 <= count <= MAX_COUNT:
        raise PromptError(
            f"'{' '.join(words)}': counts go from 1 to {MAX_COUNT} in the shapes world"
        )
    if not rest:
        raise PromptError(f"'{' '.join(words)}' names no shape; shapes: {', '.join(SHAPES)}")
    *adjectives, noun = rest
    shape = _PLURALS.get(noun, noun)
    if shape not in SHAPES:
        raise PromptError(
            f"'{' '.join(words)}' must end with a shape ({', '.join(SHAPES)}), not {noun!r}"
        )
    colour = size = None
    for adjective in adjectives:
        if adjective in COLOURS and colour is None:
            colour = adjective
        elif adjective in SIZES and size is None:
            size = adjective
        else:
            raise PromptError(
                f"'{' '.join(words)}': expected '<count> [size] [colour] <shape>', as in "
                "'two small red circles'"
            )
    return ObjectSpec(shape, count, colour, size)


# --- sampling -----------------------------------------------------------------------------


def _choice(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _maybe_size(rng: np.random.Generator, p: float = 0.25) -> str | None:
    return _choice(rng, SIZES) if rng.random() < p else None


def sample_prompt(rng: np.random.Generator, category: str | None = None) -> Prompt:
    """A random prompt of ``category`` (uniform over CATEGORIES when None)."""
    category = category or _choice(rng, CATEGORIES)
    colours = tuple(COLOURS)
    if category == "single_object":
        objects: tuple[ObjectSpec, ...] = (ObjectSpec(_choice(rng, SHAPES), size=_maybe_size(rng)),)
    elif category == "colors":
        objects = (ObjectSpec(_choice(rng, SHAPES), 1, _choice(rng, colours), _maybe_size(rng)),)
    elif category == "counting":
        count = int(rng.integers(2, MAX_COUNT + 1))
        objects = (ObjectSpec(_choice(rng, SHAPES), count, size=_maybe_size(rng, 0.2)),)
    elif category == "two_object":
        a, b = rng.choice(len(SHAPES), size=2, replace=False)
        objects = tuple(ObjectSpec(SHAPES[i], size=_maybe_size(rng, 0.2)) for i in (a, b))
    elif category == "position":
        coloured = rng.random() < 0.5
        shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), size=2, replace=coloured)]
        if coloured:
            pair = [colours[i] for i in rng.choice(len(colours), size=2, replace=False)]
            objects = tuple(ObjectSpec(s, 1, c) for s, c in zip(shapes, pair, strict=True))
        else:
            objects = tuple(ObjectSpec(s) for s in shapes)
        relation = Relation(0, _choice(rng, RELATIONS), 1)
        return make_prompt(objects, (relation,))
    elif category == "color_attr":
        n_phrases = 2 if rng.random() < 0.8 else 3
        counts = [1] * n_phrases
        while rng.random() < 0.3 and sum(counts) < MAX_OBJECTS:
            counts[int(rng.integers(n_phrases))] += 1
        pair = [colours[i] for i in rng.choice(len(colours), size=n_phrases, replace=False)]
        same = rng.random() < 0.2  # "a red circle and a blue circle": binding, not naming
        picks = rng.choice(len(SHAPES), size=n_phrases, replace=same)
        objects = tuple(
            ObjectSpec(SHAPES[s], n, c) for s, n, c in zip(picks, counts, pair, strict=True)
        )
    else:
        raise PromptError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    return make_prompt(objects)


def _place(
    sizes: list[str], relations: tuple[Relation, ...], rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Random box centres for objects of these sizes: inside, apart, relations respected."""

    def ok(objs: list[Obj]) -> bool:
        if not all(fits(o) for o in objs):
            return False
        if any(not separated(a, b) for i, a in enumerate(objs) for b in objs[i + 1 :]):
            return False
        return all(relation_holds(objs[r.subject], objs[r.object], r.relation,
                                  RELATION_OFFSET) for r in relations)  # fmt: skip

    def make(centres: list[tuple[float, float]]) -> list[Obj]:
        return [Obj("square", "red", s, x, y) for s, (x, y) in zip(sizes, centres, strict=True)]

    for attempt in range(400):
        if attempt < 200:  # free placement
            centres = []
            for s in sizes:
                half = SIZE_PIXELS[s] / 2 + BORDER
                centres.append(tuple(rng.uniform(half, IMAGE_SIZE - half, size=2)))
        else:  # one object per quadrant, jittered: always finds room for four large ones
            cells = rng.permutation(4)[: len(sizes)]
            centres = []
            for s, cell in zip(sizes, cells, strict=True):
                half = SIZE_PIXELS[s] / 2 + BORDER
                x0, y0 = (cell % 2) * IMAGE_SIZE / 2, (cell // 2) * IMAGE_SIZE / 2
                lo_x, hi_x = x0 + half, x0 + IMAGE_SIZE / 2 - half
                lo_y, hi_y = y0 + half, y0 + IMAGE_SIZE / 2 - half
                centres.append((rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)))
        centres = [(round(float(x) * 4) / 4, round(float(y) * 4) / 4) for x, y in centres]
        if ok(make(centres)):
            return centres
    raise RuntimeError(f"could not place objects of sizes {sizes} with {relations}")


def relation_holds(a: Obj, b: Obj, relation: str, margin: float) -> bool:
    """Whether ``a`` is ``relation`` ``b`` by more than ``margin`` pixels (box centres)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {
        "left of": dx > margin,
        "right of": -dx > margin,
        "above": dy > margin,  # image rows grow downwards
        "below": -dy > margin,
    }[relation]


def sample_scene(prompt: Prompt, rng: np.random.Generator) -> Scene:
    """A random scene satisfying ``prompt`` exactly, holding only the objects it names.

    Unnamed colours and sizes are random; objects are listed phrase by phrase.
    """
    attributes = []
    owners = []
    for index, spec in enumerate(prompt.objects):
        for _ in range(spec.count):
            colour = spec.colour or _choice(rng, tuple(COLOURS))
            size = spec.size or _choice(rng, SIZES)
            attributes.append((spec.shape, colour, size))
            owners.append(index)
    # relations index phrases; with count 1 everywhere they index objects too
    centres = _place([size for _, _, size in attributes], prompt.relations, rng)
    objects = tuple(
        Obj(shape, colour, size, x, y)
        for (shape, colour, size), (x, y) in zip(attributes, centres, strict=True)
    )
    return Scene(objects)


@lru_cache(maxsize=1)
def _suite_texts() -> frozenset[str]:
    return frozenset(p.text for p in load_suite() if p.category not in SEEN_CATEGORIES)


def held_out(text: str) -> bool:
    """Whether a caption belongs to the held-out suite (and so never appears in training)."""
    return text in _suite_texts()


def training_pair(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(image (H, W, 3) uint8, caption) for training; never a held-out suite caption."""
    while True:
        prompt = sample_prompt(rng)
        if not held_out(prompt.text):
            return render(sample_scene(prompt, rng)), prompt.text


# --- the held-out suite -------------------------------------------------------------------

#: How many suite prompts each category gets (single_object holds all 12 of its captions).
SUITE_SIZES = {
    "single_object": 12,
    "two_object": 30,
    "counting": 12,
    "colors": 24,
    "position": 66,
    "color_attr": 60,
}
#: Small categories keep at most a third of their captions without a size word held out
#: (12, 12 and 24 exist), so training still sees most plain forms like "a circle and a star".
SUITE_UNSIZED_CAP = {"two_object": 4, "counting": 4, "colors": 8}


def generate_suite(seed: int = SUITE_SEED) -> list[Prompt]:
    """Distinct prompts per category, drawn with their own seed."""
    rng = np.random.default_rng(seed)
    suite: list[Prompt] = []
    for category in CATEGORIES:
        seen: set[str] = set()
        unsized = 0
        while len(seen) < SUITE_SIZES[category]:
            prompt = sample_prompt(rng, category)
            if prompt.text in seen:
                continue
            if all(spec.size is None for spec in prompt.objects):
                if unsized >= SUITE_UNSIZED_CAP.get(category, len(seen) + 1):
                    continue
                unsized += 1
            seen.add(prompt.text)
            suite.append(prompt)
    return suite


def write_suite(path: Path = SUITE_PATH, seed: int = SUITE_SEED) -> None:
    """Regenerate ``prompts.txt`` (``python -m noisesearch_builtin.shapes.grammar``)."""
    lines = [
        f"# generated by noisesearch_builtin.shapes.grammar with seed {seed}; Apache-2.0",
        "# The held-out prompt suite of the shapes world: training captions exclude these,",
        "# except single_object (its 12 captions are all listed here and also trained on).",
    ]
    suite = generate_suite(seed)
    for category in CATEGORIES:
        lines.append(f"# {category}")
        lines += [p.text for p in suite if p.category == category]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_suite(path: Path = SUITE_PATH) -> list[Prompt]:
    """The suite's prompts, parsed (``#`` comments and blank lines skipped)."""
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            prompts.append(parse_prompt(line))
    return prompts


if __name__ == "__main__":
    write_suite()
