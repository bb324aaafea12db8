"""An exact, rule-based judge for the `shapes` world: parse the scene back out of an image.

1. **Colour segmentation.** Each pixel is explained as a blend ``background + a * (colour -
   background)`` of the background with its best-fitting palette colour (the least residual);
   the coverage ``a`` in [0, 1] survives blur and darkened edges, where nearest-colour would
   not. Pixels with ``a > ALPHA_THRESHOLD`` are foreground.
2. **Connected components** (4-connected) of the foreground; components whose soft area
   (the sum of ``a`` around them) is below ``MIN_AREA`` are specks and ignored.
3. **Colour** by an ``a``-weighted vote of the component's pixels.
4. **Shape by synthesis.** For each shape, the box that would produce the component's soft
   area and centroid is drawn with the world's own renderer and compared with the
   component's coverage; the closest shape wins. On clean renders the right shape matches
   almost perfectly; under blur it still matches best, where fill-ratio rules break down on
   small, rounded objects.
5. **Size** from the fitted box side (small 8 px, large 13 px, split at their geometric mean),
   **position** from the fitted box centre, as the renderer defines them.

The verdict follows GenEval: one clause per phrase of the prompt (exactly ``count`` objects
of that shape, colour and size), one per relation, and "nothing else" (every detected object
is named). The scalar is the fraction of clauses satisfied; ``exact`` means all are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from noisesearch_builtin.shapes.grammar import Prompt, parse_prompt, relation_holds
from noisesearch_builtin.shapes.world import (
    BACKGROUND,
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    SIZE_PIXELS,
    Obj,
    inside_shape,
    window_coverage,
)

ALPHA_THRESHOLD = 0.5
#: Soft area (pixels) below which a component is a speck, not an object; a small triangle
#: covers 32 px.
MIN_AREA = 10.0
#: Relations hold when box centres differ by more than this along the axis (the grammar's
#: scenes keep 5 px or more).
RELATION_MARGIN = 1.5
#: Box sides below this are "small": the geometric mean of 8 and 13 px.
SIZE_SPLIT = float(np.sqrt(SIZE_PIXELS["small"] * SIZE_PIXELS["large"]))
#: Blurs (pixels) tried when matching drawn shapes: none for renders, more for decoders.
BLUR_SIGMAS = tuple(round(0.1 * i, 1) for i in range(17))
_PAD = 3
#: How far (pixels) one object's blur may stray from the blur fitted to the whole image.
BLUR_SLACK = 0.2
#: Pixels around each component that count as its blurred rim.
RIM = 4


@dataclass(frozen=True)
class Detected:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    area: float  # soft area in pixels
    extent: float = 0.0  # fitted box side in pixels
    fit: float = 0.0  # mean absolute coverage error of the chosen shape (0 = perfect)

    def as_obj(self) -> Obj:
        return Obj(self.shape, self.colour, self.size, self.cx, self.cy)


@dataclass
class Verdict:
    clauses: list[tuple[str, bool]]
    fraction: float
    exact: bool


def to_array(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) float image in 0..255 at IMAGE_SIZE, from uint8 or [0, 1] float input."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    array = array.astype(np.float64)
    if np.issubdtype(np.asarray(image).dtype, np.floating):
        array = array * 255.0
    height, width = array.shape[:2]
    if (height, width) != (IMAGE_SIZE, IMAGE_SIZE):
        if height % IMAGE_SIZE or width % IMAGE_SIZE:
            rows = (np.arange(IMAGE_SIZE) + 0.5) * height / IMAGE_SIZE
            cols = (np.arange(IMAGE_SIZE) + 0.5) * width / IMAGE_SIZE
            array = array[rows.astype(int)][:, cols.astype(int)]
        else:  # block average, as a downscale of an upscaled render should be
            fy, fx = height // IMAGE_SIZE, width // IMAGE_SIZE
            array = array.reshape(IMAGE_SIZE, fy, IMAGE_SIZE, fx, 3).mean(axis=(1, 3))
    return array


def coverage_map(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel coverage ``a`` (H, W) and best palette index (H, W) of a 0..255 image."""
    background = np.asarray(BACKGROUND, dtype=np.float64)
    palette = np.asarray(list(COLOURS.values()), dtype=np.float64) - background  # (K, 3)
    offset = image - background  # (H, W, 3)
    norms = (palette**2).sum(axis=1)  # (K,)
    alpha = np.clip(offset @ palette.T / norms, 0.0, 1.0)  # (H, W, K)
    fitted = alpha[..., None] * palette  # (H, W, K, 3)
    residual = np.linalg.norm(offset[:, :, None, :] - fitted, axis=-1)  # (H, W, K)
    best = residual.argmin(axis=-1)  # (H, W)
    return np.take_along_axis(alpha, best[..., None], axis=-1)[..., 0], best


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected component labels (H, W), 0 for background, 1..n for components.

    Every foreground pixel starts as its own root (its flat index) and takes the smallest
    root among its neighbours, with pointer jumping, until nothing changes.
    """
    height, width = mask.shape
    big = height * width
    flat = np.where(mask.ravel(), np.arange(big), big)  # (H*W,)
    while True:
        grid = flat.reshape(height, width)
        smallest = grid.copy()
        np.minimum(smallest[1:], grid[:-1], out=smallest[1:])
        np.minimum(smallest[:-1], grid[1:], out=smallest[:-1])
        np.minimum(smallest[:, 1:], grid[:, :-1], out=smallest[:, 1:])
        np.minimum(smallest[:, :-1], grid[:, 1:], out=smallest[:, :-1])
        updated = np.where(mask.ravel(), smallest.ravel(), big)
        roots = np.append(updated, big)
        updated = np.where(mask.ravel(), roots[roots[updated]], big)  # pointer jumping
        if np.array_equal(updated, flat):
            break
        flat = updated
    unique, labels = np.unique(flat, return_inverse=True)
    labels = labels + 1
    labels[flat == big] = 0
    return labels.reshape(height, width), int((unique < big).sum())


@dataclass(frozen=True)
class _Template:
    fill: float  # area over box area
    dx: float  # centroid minus box centre, in box sides
    dy: float


@cache
def _template(shape: str) -> _Template:
    grid = (np.arange(400) + 0.5) / 200 - 1  # fine samples over the box [-1, 1]
    u, v = np.meshgrid(grid, grid)
    inside = inside_shape(shape, u, v)
    return _Template(
        fill=float(inside.mean()),
        dx=float(u[inside].mean() / 2),
        dy=float(v[inside].mean() / 2),
    )


@lru_cache(maxsize=64)
def _blur_matrices(n: int) -> np.ndarray:
    """(S, n, n + 2 * _PAD): each of BLUR_SIGMAS as a matrix from a padded row to the row."""
    return np.stack([_blur_matrix(n, sigma) for sigma in BLUR_SIGMAS])


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n + 2 * _PAD) Gaussian blur from a padded row of pixels to the unpadded one."""
    offsets = np.arange(n)[:, None] + _PAD - np.arange(n + 2 * _PAD)[None, :]  # (n, n + 2P)
    if sigma <= 0:
        return (offsets == 0).astype(np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    full = np.exp(-0.5 * (np.arange(-3 * _PAD, 3 * _PAD + 1) / sigma) ** 2).sum()
    return taps / full


@dataclass(frozen=True)
class _Fit:
    shape: str
    cx: float
    cy: float
    extent: float
    errors: np.ndarray  # (S,) over BLUR_SIGMAS


def _fit_shapes(alpha: np.ndarray, owned: np.ndarray, x0: int, y0: int) -> list[_Fit]:
    """How well each shape, blurred by each of BLUR_SIGMAS, explains a coverage window (h, w).

    Each shape is drawn at the box its area and centroid imply, then blurred: a blurred
    object is compared with blurred drawings, not with sharp ones. The error is the absolute
    coverage difference over the pixels the component ``owned`` (h, w), per unit of area.
    """
    h, w = alpha.shape
    area = alpha.sum()
    ys, xs = np.mgrid[0:h, 0:w]
    mx = x0 + ((xs + 0.5) * alpha).sum() / area
    my = y0 + ((ys + 0.5) * alpha).sum() / area
    rows, cols = _blur_matrices(h), _blur_matrices(w)  # (S, h, h + 2P), (S, w, w + 2P)
    fits = []
    for shape in SHAPES:
        template = _template(shape)
        extent = float(np.sqrt(area / template.fill))
        cx, cy = mx - template.dx * extent, my - template.dy * extent
        drawn = _draw(shape, cx, cy, extent, x0 - _PAD, y0 - _PAD, w + 2 * _PAD, h + 2 * _PAD)
        blurred = rows @ drawn @ cols.transpose(0, 2, 1)  # (S, h, w)
        errors = (np.abs(blurred - alpha) * owned).sum(axis=(1, 2)) / area  # (S,)
        fits.append(_Fit(shape, float(cx), float(cy), extent, errors))
    return fits


def _draw(
    shape: str, cx: float, cy: float, extent: float, x0: int, y0: int, w: int, h: int
) -> np.ndarray:
    """Coverage (h, w) on the window at (x0, y0), drawn only over the shape's own box."""
    half = extent / 2
    bx0, by0 = max(int(np.floor(cx - half)), x0), max(int(np.floor(cy - half)), y0)
    bx1, by1 = min(int(np.ceil(cx + half)), x0 + w), min(int(np.ceil(cy + half)), y0 + h)
    drawn = np.zeros((h, w))
    if bx1 > bx0 and by1 > by0:
        drawn[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = window_coverage(
            shape, cx, cy, extent, bx0, by0, bx1 - bx0, by1 - by0
        )
    return drawn


def grow_labels(labels: np.ndarray, steps: int) -> np.ndarray:
    """Labels (H, W) grown ``steps`` pixels into the background: who owns each blurred rim."""
    grown = labels.copy()
    for _ in range(steps):
        padded = np.pad(grown, 1)
        neighbours = np.stack([
            padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:],
        ])  # fmt: skip
        reach = np.where(neighbours > 0, neighbours, np.iinfo(grown.dtype).max).min(axis=0)
        grown = np.where((grown == 0) & (neighbours.max(axis=0) > 0), reach, grown)
    return grown


def detect(image: np.ndarray) -> list[Detected]:
    """The objects in an image (H, W, 3): uint8, or float in [0, 1]; left to right, top down.

    One blur is fitted to the whole image (a decoder blurs every object alike), which keeps
    a heavily blurred small star from passing for a sharper circle; each object may still
    deviate from it by BLUR_SLACK.
    """
    pixels = to_array(image)
    alpha, best = coverage_map(pixels)
    labels, count = label_components(alpha > ALPHA_THRESHOLD)
    names = list(COLOURS)
    components = []
    owners = grow_labels(labels, RIM)
    for label in range(1, count + 1):
        core = labels == label
        rows, cols = np.nonzero(core)
        y0, y1 = max(rows.min() - RIM, 0), min(rows.max() + RIM + 1, IMAGE_SIZE)
        x0, x1 = max(cols.min() - RIM, 0), min(cols.max() + RIM + 1, IMAGE_SIZE)
        owned = owners[y0:y1, x0:x1] == label  # (h, w)
        window = np.where(owned, alpha[y0:y1, x0:x1], 0.0)  # (h, w)
        area = float(window.sum())
        if area < MIN_AREA:
            continue
        votes = np.bincount(best[core], weights=alpha[core], minlength=len(names))
        fits = _fit_shapes(window, owned, int(x0), int(y0))
        components.append((names[int(votes.argmax())], area, fits))
    if not components:
        return []
    table = np.stack([[f.errors for f in fits] for _, _, fits in components])  # (C, shapes, S)
    sigma = int(table.min(axis=1).sum(axis=0).argmin())
    sigmas = np.asarray(BLUR_SIGMAS)
    allowed = np.abs(sigmas - sigmas[sigma]) <= BLUR_SLACK + 1e-9  # (S,)
    found = []
    for colour, area, fits in components:
        errors = [float(f.errors[allowed].min()) for f in fits]
        fit = fits[int(np.argmin(errors))]
        size = "small" if fit.extent < SIZE_SPLIT else "large"
        found.append(
            Detected(fit.shape, colour, size, fit.cx, fit.cy, area, fit.extent, min(errors))
        )
    return sorted(found, key=lambda d: (d.cx, d.cy))


def judge(image: np.ndarray, prompt: str | Prompt) -> Verdict:
    """GenEval-style verdict of an image (H, W, 3) against a prompt of the shapes grammar."""
    parsed = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    return judge_detections(detect(image), parsed)


def judge_detections(found: list[Detected], prompt: Prompt) -> Verdict:
    """The verdict for already detected objects (see :func:`judge`)."""
    names = prompt.clauses()
    matched = [
        [d for d in found if spec.matches(d.shape, d.colour, d.size)] for spec in prompt.objects
    ]
    results = [len(m) == spec.count for m, spec in zip(matched, prompt.objects, strict=True)]
    for rel in prompt.relations:
        results.append(
            any(
                relation_holds(a.as_obj(), b.as_obj(), rel.relation, RELATION_MARGIN)
                for a in matched[rel.subject]
                for b in matched[rel.object]
                if a is not b
            )
        )
    results.append(all(any(d is x for m in matched for x in m) for d in found))
    clauses = list(zip(names, results, strict=True))
    return Verdict(clauses, sum(results) / len(results), all(results))
