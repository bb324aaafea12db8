"""Safe file and folder names from user text (prompts, plugin names).

A prompt may hold anything: ``../``, slashes, NUL bytes, newlines, emoji, ten thousand
characters. A run folder named after it must stay inside its parent, open on every file
system and stay distinct from the folder of a prompt that differs only in punctuation, so the
name is an ASCII slug of bounded length plus a short hash of the exact text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

#: Longest name :func:`safe_name` returns, hash suffix included.
MAX_NAME_LENGTH = 60
HASH_LENGTH = 8
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]*")


def text_hash(text: str, length: int = HASH_LENGTH) -> str:
    """A short, stable hex digest of ``text`` (the same on every machine and Python run)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()[:length]


def slugify(text: str) -> str:
    """Lower-case ASCII letters and digits joined by single dashes; may be empty."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def safe_name(text: str, max_length: int = MAX_NAME_LENGTH, fallback: str = "prompt") -> str:
    """``<slug>-<hash>``: a readable, distinct name for any text, never a path.

    The slug keeps only ``[a-z0-9-]`` (no dots, slashes or control characters, so no
    traversal and no hidden files); the hash of the exact text keeps "a cat" and "A cat!"
    apart. ``fallback`` stands in for text with nothing readable in it.
    """
    if max_length < HASH_LENGTH + 2:
        raise ValueError(f"max_length must be at least {HASH_LENGTH + 2}, got {max_length}")
    slug = slugify(text)[: max_length - HASH_LENGTH - 1].rstrip("-") or slugify(fallback) or "x"
    return f"{slug[: max_length - HASH_LENGTH - 1]}-{text_hash(text)}"


def safe_token(text: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """``text`` itself when it is already a short, plain name (``digits``, ``label3``),
    else :func:`safe_name` of it."""
    if len(text) <= max_length and _TOKEN.fullmatch(text):
        return text
    return safe_name(text, max_length, fallback="name")


def model_label(model: Any, options: Mapping[str, Any] | None = None) -> str:
    """A run's model as people tell runs apart: its name, and for a model given by a ``path``
    option (``hf``) the pipeline too: ``hf:stabilityai/sdxl-turbo`` for a hub id, ``hf:sd-tiny`` for
    a local folder (its last component: the full path is in ``run.json``)."""
    name = str(model)
    path = (options or {}).get("path") if isinstance(options, Mapping) else None
    if not isinstance(path, str) or not path or ":" in name:
        return name
    local = PurePath(path).is_absolute() or path.startswith((".", "~"))
    return f"{name}:{PurePath(path).name if local else path}"
