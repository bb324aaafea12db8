"""Non-finite scores (NaN, +inf, -inf): how they rank and how they are written.

A verifier may return NaN (a division by zero, a broken network) or an infinity. Such a
score is never selected: it ranks below every finite score (``+inf`` included, which is as
suspect as NaN). Files stay strict JSON (RFC 8259 has no NaN): a non-finite number is written
as ``null``, and the object that holds it lists where and what it was under
``non_finite_values``, a map from a JSON pointer (RFC 6901) to ``"nan"``, ``"inf"`` or ``"-inf"``.
"""

from __future__ import annotations

import math
from typing import Any

#: The key of the flag that :func:`strict_json` adds next to ``null``-ed numbers.
FLAG = "non_finite_values"


def is_finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite."""
    if type(value) is float:  # nearly every call (scores, objectives): the short way
        return math.isfinite(value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rank_key(value: float) -> tuple[int, float]:
    """Sort key, larger is better: every finite value above every non-finite one; non-finite
    values tie among themselves (their order is then the caller's tie-break)."""
    return (1, float(value)) if is_finite(value) else (0, 0.0)


def spelling(value: float) -> str:
    """``"nan"``, ``"inf"`` or ``"-inf"``."""
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def strict_json(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with every non-finite float replaced by ``None`` and, when there was
    any, ``data[FLAG]`` mapping each one's JSON pointer to its spelling (``json.dumps(...,
    allow_nan=False)`` then succeeds)."""
    found: dict[str, str] = {}
    clean = _clean(data, "", found)
    if found:
        clean[FLAG] = {**(data.get(FLAG) or {}), **found}
    return clean


def _clean(value: Any, pointer: str, found: dict[str, str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        found[pointer] = spelling(value)
        return None
    if isinstance(value, dict):
        return {k: _clean(v, f"{pointer}/{_escape(str(k))}", found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{pointer}/{i}", found) for i, v in enumerate(value)]
    return value


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")
