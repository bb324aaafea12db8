"""Recipes: how a candidate was made, so that it can be regenerated exactly.

A recipe is a JSON-able dict: ``{"start": <noise recipe>, "ops": [<op>, ...]}``.

Noise recipes (the initial noise at the first level of the grid):
- ``{"kind": "seed", "seed": s}``: standard normal noise from a CPU ``torch.Generator``.
- ``{"kind": "neighbour", "root": s, "moves": [[s1, c1], [s2, c2], ...]}``: zero-order
  search's walk: from the noise of seed ``s``, each move goes to the point on the current
  noise's same-norm sphere at cosine ``c`` in the direction of seed ``s_i``'s noise.
- ``{"kind": "subspace", "seed": s, "transform": "dct-ii", "layout": [C, H, W], "band": [h, w],
  "coefficients": [...]}``: evolution search's noise: the noise of seed ``s`` with its
  lowest-frequency band of ``C * h * w`` coefficients replaced (``noisesearch.spectral``).
- Other kinds (a plugin's own) cannot be re-derived; replay then uses the saved noise.

Ops, applied in order to the noise:
- ``{"op": "solve", "levels": [...], "batch": B, "row": i}``: the ODE over those levels,
  computed as row ``i`` of a batch of ``B`` rows. Results depend (by ~1e-7) on the batch size
  and on the row (matrix kernels treat remainder rows differently), not on the other rows'
  content, so replay puts the row back at ``i`` of a zero-padded batch of ``B``: then it is
  bit for bit the same on the same device, dtype and thread count. With a stochastic solver (a
  model's own sampler that adds noise at each step, e.g. Euler ancestral) the op also has
  ``"noise_seed": k``: the row's step noises come from a CPU generator seeded with ``k``.
- ``{"op": "renoise", "from": s, "to": s2, "seed": k}``: the forward kernel to a noisier level
  with noise from seed ``k``.

A finished candidate's recipe also says where it was decoded, ``"decode": {"batch": B,
"row": i}``, since a VAE, like the denoiser, is exact only at the same batch size and row.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from noisesearch import spectral
from noisesearch.sampling import Denoiser, Schedule, Solver, draw_noise, renoise, solve

if TYPE_CHECKING:
    import torch

Recipe = dict[str, Any]

DERIVABLE_KINDS = ("seed", "neighbour", "subspace")
#: The transform of ``subspace`` noise recipes (``noisesearch.spectral``).
SUBSPACE_TRANSFORM = spectral.TRANSFORM


def seed_recipe(seed: int) -> Recipe:
    return {"kind": "seed", "seed": int(seed)}


def neighbour_recipe(pivot: Recipe, seed: int, cosine: float) -> Recipe:
    """One zero-order move from ``pivot`` (a seed or neighbour recipe), kept flat so that long
    walks neither nest nor recurse."""
    if pivot["kind"] == "seed":
        root, moves = pivot["seed"], []
    elif pivot["kind"] == "neighbour":
        root, moves = pivot["root"], pivot["moves"]
    else:
        raise ValueError(f"a neighbour needs a seed or neighbour pivot, not {pivot['kind']!r}")
    return {"kind": "neighbour", "root": root, "moves": [*moves, [int(seed), float(cosine)]]}


def neighbour_noise(pivot_noise: torch.Tensor, seed: int, cosine: float) -> torch.Tensor:
    """The noise of one move from ``pivot_noise`` (on the CPU, as drawn): direction from
    ``seed``, cosine ``cosine``."""
    direction = draw_noise([seed], tuple(pivot_noise.shape), "cpu", pivot_noise.dtype)[0]
    return same_norm_neighbour(pivot_noise, direction, cosine)


def subspace_recipe(
    seed: int, grid: Sequence[int], band: Sequence[int], coefficients: Sequence[float]
) -> Recipe:
    """The noise of ``seed`` with its DCT band ``band`` (of the latent read as ``grid``, see
    ``noisesearch.spectral.layout``) set to ``coefficients`` (float64 values, kept exactly)."""
    return {"kind": "subspace", "seed": int(seed), "transform": spectral.TRANSFORM,
            "layout": [int(d) for d in grid], "band": [int(d) for d in band],
            "coefficients": [float(c) for c in coefficients]}


def subspace_grid(shape: Sequence[int]) -> tuple[int, int, int]:
    """How subspace recipes read a latent of ``shape``: ``(C, H, W)`` (``spectral.layout``; a
    ``ValueError`` for a latent with no spatial layout)."""
    return spectral.layout(shape)


def solve_op(levels: Sequence[float], batch: int, row: int, noise_seed: int | None = None) -> dict[str, Any]:
    """A ``solve`` op; ``noise_seed`` only for a stochastic solver's row. A list of levels is kept
    as is (not copied): a batch's rows share it."""
    kept = levels if isinstance(levels, list) else [float(level) for level in levels]
    op: dict[str, Any] = {"op": "solve", "levels": kept}
    op.update(batch=batch, row=row)
    if noise_seed is not None:
        op["noise_seed"] = int(noise_seed)
    return op


def candidate_recipe(start: Recipe) -> Recipe:
    if start.keys() == _SEED_KEYS and type(start["seed"]) is int:  # nearly every candidate
        return {"start": {"kind": start["kind"], "seed": start["seed"]}, "ops": []}
    return {"start": _copy_json(start), "ops": []}


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars): ``copy.deepcopy`` without its
    memo, which cost a search ~30 ms per 4096 candidates."""
    if isinstance(value, dict):
        return {key: item if type(item) in _SCALARS else _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [item if type(item) in _SCALARS else _copy_json(item) for item in value]
    return value if type(value) in _SCALARS else copy.deepcopy(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})
_SEED_KEYS = frozenset({"kind", "seed"})


def with_op(recipe: Recipe, op: dict[str, Any] | None = None) -> Recipe:
    """A copy of ``recipe`` whose op list grows independently (resampled particles share a
    past), with ``op`` appended if given."""
    return {"start": recipe["start"], "ops": [*recipe["ops"], *([op] if op else [])]}


def is_derivable(noise_recipe: Recipe) -> bool:
    return noise_recipe.get("kind") in DERIVABLE_KINDS


def recipe_problem(
    recipe: Any, shape: Sequence[int] | None = None, max_batch: int | None = None
) -> str | None:
    """What keeps :func:`replay` from using ``recipe``, as ``"FIELD should be ...; got ..."``
    (``FIELD`` inside the recipe, e.g. ``ops[0].row``), or ``None`` when it is well formed.

    Replay reads a recipe back from ``run.json``, which a person may have edited or a disk
    damaged: checking its structure first names the bad field in one line, before any model
    loads, instead of a traceback from deep in :func:`replay`. ``shape`` (the model's latent)
    also checks a subspace noise's layout; ``max_batch`` (the run's batch size) bounds a batch.
    """
    try:
        _require(isinstance(recipe, dict), "recipe", recipe, "a table")
        start, ops = recipe.get("start", _MISSING), recipe.get("ops", _MISSING)
        _require(isinstance(start, dict), "start", start, "a table")
        _check_start(start, shape)
        _require(isinstance(ops, list), "ops", ops, "a list of ops")
        for i, op in enumerate(ops):
            _check_op(op, f"ops[{i}]", max_batch)
        decode = recipe.get("decode", {})
        _require(isinstance(decode, dict) and set(decode) <= {"batch", "row"}, "decode", decode,
                 "a table of batch and row")
        _check_batch_row(decode, "decode", max_batch, 1)
        inputs = recipe.get("inputs", {})
        _require(isinstance(inputs, dict) and all(isinstance(v, str) for v in inputs.values()), "inputs",
                 inputs, "a table of file SHA-256 digests")
    except _Damaged as damaged:
        return str(damaged)
    return None


class _Damaged(Exception):
    """One field of a recipe that replay cannot use (internal to :func:`recipe_problem`)."""


_MISSING = object()


def _require(ok: bool, field: str, value: Any, what: str) -> None:
    if not ok:
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        got = "it is missing" if value is _MISSING else f"got {text}"
        raise _Damaged(f"{field} should be {what}; {got}")


def _is_number(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _is_seed(value: Any) -> bool:
    """A whole number a ``torch.Generator`` accepts as its seed."""
    return type(value) is int and -(2**63) <= value < 2**64


def _check_seed(table: dict[str, Any], key: str, field: str) -> None:
    value = table.get(key, _MISSING)
    _require(_is_seed(value), f"{field}.{key}", value, "a whole-number seed")


def _check_start(start: dict[str, Any], shape: Sequence[int] | None) -> None:
    """A derivable noise recipe's fields; other kinds come from the saved noise, unchecked."""
    kind = start.get("kind")
    if kind == "seed":
        _check_seed(start, "seed", "start")
    elif kind == "neighbour":
        _check_seed(start, "root", "start")
        moves = start.get("moves", _MISSING)
        _require(isinstance(moves, list) and all(
            isinstance(m, list) and len(m) == 2 and _is_seed(m[0]) and _is_number(m[1]) and -1 <= m[1] <= 1
            for m in moves), "start.moves", moves, "a list of [seed, cosine] pairs")
    elif kind == "subspace":
        _check_seed(start, "seed", "start")
        transform = start.get("transform", _MISSING)
        _require(transform == spectral.TRANSFORM, "start.transform", transform, repr(spectral.TRANSFORM))
        grid, band = start.get("layout", _MISSING), start.get("band", _MISSING)
        _require(_positive_ints(grid, 3), "start.layout", grid, "[channels, height, width]")
        if shape is not None:
            try:
                latent = list(spectral.layout(shape))
            except ValueError:
                latent = None
            _require(grid == latent, "start.layout", grid, f"the model's latent layout {latent}")
        _require(_positive_ints(band, 2) and band[0] <= grid[1] and band[1] <= grid[2], "start.band", band,
                 f"[h, w] within the layout's {grid[1]} x {grid[2]}")
        count = grid[0] * band[0] * band[1]
        coefficients = start.get("coefficients", _MISSING)
        _require(isinstance(coefficients, list) and len(coefficients) == count
                 and all(_is_number(c) for c in coefficients), "start.coefficients",
                 coefficients, f"a list of {count} numbers (channels x h x w)")


def _positive_ints(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(type(d) is int and d > 0 for d in value)


def _check_op(op: Any, field: str, max_batch: int | None) -> None:
    _require(isinstance(op, dict), field, op, "a table")
    kind = op.get("op", _MISSING)
    if kind == "solve":
        levels = op.get("levels", _MISSING)
        _require(isinstance(levels, list) and len(levels) >= 2
                 and all(_is_number(s) and 0 <= s <= 1 for s in levels)
                 and all(b < a for a, b in zip(levels, levels[1:])), f"{field}.levels", levels,
                 "at least two decreasing noise levels in [0, 1]")
        _check_batch_row(op, field, max_batch, _MISSING)
        if "noise_seed" in op:
            _check_seed(op, "noise_seed", field)
    elif kind == "renoise":
        for key in ("from", "to"):
            level = op.get(key, _MISSING)
            _require(_is_number(level) and 0 <= level <= 1, f"{field}.{key}", level,
                     "a noise level in [0, 1]")
        _require(op["to"] > op["from"], f"{field}.to", op["to"], f"a noisier level than from ({op['from']})")
        _check_seed(op, "seed", field)
    else:
        _require(False, f"{field}.op", kind, "'solve' or 'renoise'")


def _check_batch_row(table: dict[str, Any], field: str, max_batch: int | None, default_batch: Any) -> None:
    """``batch`` and ``row``: the row must lie in the batch it is padded back into."""
    batch = table.get("batch", default_batch)
    limit = f"from 1 to {max_batch}" if max_batch else "of 1 or more"
    _require(type(batch) is int and 1 <= batch <= (max_batch or batch), f"{field}.batch", batch,
             f"a batch size {limit}")
    row = table.get("row", 0)
    _require(type(row) is int and 0 <= row < batch, f"{field}.row", row, f"a row of its batch of {batch} "
             f"(0 to {batch - 1})")


def same_norm_neighbour(pivot: torch.Tensor, direction: torch.Tensor, cosine: float) -> torch.Tensor:
    """``y = |n| (c u + sqrt(1 - c^2) w)``: ``u = n/|n|``, ``w`` the unit part of ``direction``
    orthogonal to ``u``. Computed in float64, where norm and cosine hold to ~1e-15, then cast
    back to the pivot's dtype: for float32 noise the cast alone moves them by up to ~1e-8
    (relative; measured 1.3e-8 on 64-element noise, 2.6e-10 on 262k elements).

    The neighbourhood of zero-order search (Ma et al. 2025, section 3.2; the metric the paper
    leaves open, as in the first author's code).
    """
    import torch

    n = pivot.to(torch.float64).flatten()
    d = direction.to(torch.float64).flatten()
    norm = n.norm()
    u = n / norm
    w = d - (d @ u) * u
    w = w / w.norm()
    y = norm * (cosine * u + math.sqrt(max(1.0 - cosine * cosine, 0.0)) * w)
    return y.reshape(pivot.shape).to(pivot.dtype)


def initial_noise(
    noise_recipe: Recipe,
    shape: Sequence[int],
    device: Any = "cpu",
    dtype: Any = None,
) -> torch.Tensor:
    """The noise ``(*shape)`` a derivable noise recipe describes."""
    kind = noise_recipe.get("kind")
    if kind == "seed":
        return draw_noise([noise_recipe["seed"]], shape, device, dtype)[0]
    if kind == "neighbour":
        noise = draw_noise([noise_recipe["root"]], shape, "cpu", dtype)[0]
        for seed, cosine in noise_recipe["moves"]:
            noise = neighbour_noise(noise, seed, cosine)
        return noise.to(device)
    if kind == "subspace":
        if noise_recipe.get("transform") != spectral.TRANSFORM:
            raise ValueError(f"unknown subspace transform {noise_recipe.get('transform')!r}")
        base = draw_noise([noise_recipe["seed"]], shape, "cpu", None)[0]
        noise = spectral.with_band(base, noise_recipe["layout"], noise_recipe["band"],
                                   noise_recipe["coefficients"])
        return noise.to(device=device, dtype=dtype or base.dtype)
    raise ValueError(f"noise recipe kind {kind!r} cannot be re-derived; pass the noise itself")


def solve_padded(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    levels: Sequence[float],
    solver: str | Solver,
    batch: int,
    row: int = 0,
    noise_seed: int | None = None,
) -> torch.Tensor:
    """Solve one row ``x`` (shape ``(*latent)``) as row ``row`` of a zero-padded batch of
    ``batch`` rows, so that it meets the same kernels as when it was first computed; a stochastic
    solver's padding rows get seed 0 (rows do not share step noise)."""
    import torch

    padded = torch.zeros((batch, *x.shape), dtype=x.dtype, device=x.device)
    padded[row] = x
    seeds = None
    if noise_seed is not None:
        seeds = [0] * batch
        seeds[row] = int(noise_seed)
    return solve(denoiser, padded, schedule, levels, solver, noise_seeds=seeds).x[row]


def decode_padded(decode: Any, latent: torch.Tensor, batch: int = 1, row: int = 0) -> torch.Tensor:
    """Decode one latent as row ``row`` of a zero-padded batch of ``batch`` latents, as it was
    decoded in its run; returns its image ``(3, H, W)``."""
    import torch

    padded = torch.zeros((batch, *latent.shape), dtype=latent.dtype, device=latent.device)
    padded[row] = latent
    return decode(padded)[row]


def replay(
    recipe: Recipe,
    denoiser: Denoiser,
    schedule: Schedule,
    solver: str | Solver,
    shape: Sequence[int],
    device: Any = "cpu",
    dtype: Any = None,
    noise: torch.Tensor | None = None,
    initial_state: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Re-run a candidate recipe; returns its final latent ``(*shape)``.

    ``noise`` replaces the start noise for recipes whose noise kind cannot be re-derived.
    ``initial_state`` makes the state at the grid's first level from a batch of noises, where the
    model starts elsewhere than at the noise (img2img: ``Engine.initial_state``).
    """
    start = recipe["start"]
    if noise is None:
        x = initial_noise(start, shape, device, dtype)
    else:
        x = noise.to(device=device, dtype=dtype or noise.dtype)
    if initial_state is not None:
        x = initial_state(x[None])[0]
    for op in recipe["ops"]:
        if op["op"] == "solve":
            x = solve_padded(denoiser, x, schedule, op["levels"], solver, op["batch"], op.get("row", 0),
                             op.get("noise_seed"))
        elif op["op"] == "renoise":
            eps = draw_noise([op["seed"]], shape, device, dtype)[0]
            x = renoise(x, schedule, op["from"], op["to"], eps)
        else:
            raise ValueError(f"unknown recipe op {op['op']!r}")
    return x
