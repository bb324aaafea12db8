"""Prompt suites: the conditions a bench runs every strategy on.

A suite file has one condition per line: a prompt, or ``label:N`` / ``label:NAME`` for a
class-conditional model. Blank lines and ``#`` comments are skipped; a comment that is one
word alone (``# two_object``) starts a category, so that a bench can take a few prompts from
each category. Suites by name:

- ``model``: the model's own suite (its ``prompt_suite`` trait: a file shipped with it; the
  digits labels, the shapes prompts);
- ``geneval-style``: a GenEval-style compositional list shipped here (Apache-2.0);
- ``drawbench:FILE``: DrawBench's 200 prompts from a copy the user supplies (its CSV with
  ``Prompts`` and ``Category`` columns, or a text suite). DrawBench (Saharia et al. 2022) is
  published without a stated licence, so noisesearch does not ship it;
- any other value is a suite file (``--prompts FILE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisesearch.errors import ConfigError

SUITES_DIR = Path(__file__).parent / "suites"
NAMED_SUITES = {"geneval-style": SUITES_DIR / "geneval-style.txt"}
MODEL_SUITE = "model"
DRAWBENCH_PREFIX = "drawbench:"
LABEL_PREFIX = "label:"
_CATEGORY = re.compile(r"#\s*([A-Za-z0-9_\-]+)\s*")


@dataclass(frozen=True)
class SuiteItem:
    """One condition of a suite: a prompt or a label, with its category and source line."""

    prompt: str | None
    label: int | str | None
    category: str
    line: int

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"category": self.category}
        if self.prompt is not None:
            data["prompt"] = self.prompt
        if self.label is not None:
            data["label"] = self.label
        return data


def parse_suite(text: str, source: str) -> list[SuiteItem]:
    """The items of a suite file's text (see the module docstring for the format)."""
    items, category = [], "default"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _CATEGORY.fullmatch(line)
            if match:
                category = match.group(1)
            continue
        if line.lower().startswith(LABEL_PREFIX):
            value = line[len(LABEL_PREFIX):].strip()
            if not value:
                raise ConfigError("prompts", f"{source}, line {number}: 'label:' without a label")
            label: int | str = int(value) if value.isdigit() else value
            items.append(SuiteItem(None, label, category, number))
        else:
            items.append(SuiteItem(line, None, category, number))
    if not items:
        raise ConfigError("prompts", f"{source} holds no prompt or label")
    return items


def read_suite_file(path: Path | str) -> list[SuiteItem]:
    path = Path(path).expanduser()  # "~/..." from a grid file or bench(): no shell expands it
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("prompts", f"cannot read {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("prompts", f"{str(path)!r} is not UTF-8 text") from None
    if path.suffix.lower() == ".csv":
        return _read_csv(text, str(path))
    return parse_suite(text, str(path))


def _read_csv(text: str, source: str) -> list[SuiteItem]:
    """DrawBench's own table: a ``Prompts`` (or ``prompt``) column, maybe ``Category``."""
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    columns = {name.lower(): name for name in reader.fieldnames or []}
    prompt_column = columns.get("prompts") or columns.get("prompt")
    if prompt_column is None:
        raise ConfigError("prompts", f"{source}: a CSV suite needs a 'Prompts' column")
    category_column = columns.get("category")
    items = []
    for number, row in enumerate(reader, 2):
        prompt = (row.get(prompt_column) or "").strip()
        if prompt:
            category = (row.get(category_column) or "").strip() if category_column else ""
            items.append(SuiteItem(prompt, None, category or "default", number))
    if not items:
        raise ConfigError("prompts", f"{source} holds no prompt")
    return items


def load_suite(spec: str, model_suite: str | None, model_name: str) -> list[SuiteItem]:
    """The items of suite ``spec`` (``model``, a named suite, ``drawbench:FILE`` or a file)."""
    if spec == MODEL_SUITE:
        if not model_suite:
            raise ConfigError(
                "prompts", f"model {model_name!r} ships no prompt suite; give one with --prompts FILE"
            )
        return read_suite_file(model_suite)
    if spec in NAMED_SUITES:
        return read_suite_file(NAMED_SUITES[spec])
    if spec.startswith(DRAWBENCH_PREFIX):
        return read_suite_file(spec[len(DRAWBENCH_PREFIX):])
    if not Path(spec).expanduser().exists():
        names = ", ".join([MODEL_SUITE, *NAMED_SUITES, DRAWBENCH_PREFIX + "FILE"])
        raise ConfigError("prompts", f"{spec!r} is neither a suite ({names}) nor a file")
    return read_suite_file(spec)


def check_items(items: list[SuiteItem], conditioning: str, model_name: str, source: str) -> None:
    """Refuse a label for a text model, a prompt for a class-conditional one, naming the line."""
    for item in items:
        if conditioning == "prompt" and item.label is not None:
            raise ConfigError("prompts", f"{source}, line {item.line}: a label, but model "
                              f"{model_name!r} is text-conditioned; write a prompt")
        if conditioning == "label" and item.prompt is not None:
            raise ConfigError("prompts", f"{source}, line {item.line}: a prompt ({item.prompt!r}), "
                              f"but model {model_name!r} is class-conditional; write label:N")
        if conditioning == "none":
            raise ConfigError("prompts", f"model {model_name!r} is unconditional: it takes no suite")


def subset(items: list[SuiteItem], per_category: int | None, limit: int | None) -> list[SuiteItem]:
    """At most ``per_category`` items of each category (in file order), then at most ``limit``
    items, taken round-robin over the categories so that a small bench still spans them."""
    if per_category is not None:
        counts: dict[str, int] = {}
        kept = []
        for item in items:
            if counts.get(item.category, 0) < per_category:
                counts[item.category] = counts.get(item.category, 0) + 1
                kept.append(item)
        items = kept
    if limit is not None and limit < len(items):
        groups: dict[str, list[SuiteItem]] = {}
        for item in items:
            groups.setdefault(item.category, []).append(item)
        ordered, queues = [], [list(group) for group in groups.values()]
        while len(ordered) < limit:
            for queue in queues:
                if queue and len(ordered) < limit:
                    ordered.append(queue.pop(0))
        order = {id(item): i for i, item in enumerate(items)}
        items = sorted(ordered, key=lambda item: order[id(item)])
    return items
