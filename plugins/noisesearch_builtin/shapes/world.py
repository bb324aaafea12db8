"""The `shapes` world: flat coloured shapes on a plain background, and its one renderer.

Every object is defined by its axis-aligned bounding box (centre ``cx, cy`` and side
``SIZE_PIXELS[size]``, in continuous pixel coordinates: pixel ``i`` covers ``[i, i + 1)``), so
the judge can read positions and sizes back from what it segments. Shapes are drawn with 4x4
supersampling (anti-aliased edges, like a decoder's output) and never overlap: boxes keep at
least ``MIN_GAP`` pixels between them, so connected components separate.

numpy only: the training script, the judge and the tests all draw with :func:`render`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
#: A dark grey, so every colour stands out and blurred edges stay on the colour's own line.
BACKGROUND: tuple[int, int, int] = (20, 20, 20)
#: Six hues 45-60 degrees apart as seen from the background, so a blurred or darkened
#: object still maps to the right name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "yellow": (235, 215, 40),
    "green": (40, 190, 60),
    "cyan": (40, 200, 220),
    "blue": (50, 80, 235),
    "purple": (175, 60, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("small", "large")
#: Side of the bounding box. Four large objects fit in a 2x2 layout: 1 + 13 + 2 + 13 + 1 < 32.
SIZE_PIXELS: dict[str, float] = {"small": 8.0, "large": 13.0}
#: Empty pixels kept between two objects' boxes, and between a box and the image border.
MIN_GAP = 2.0
BORDER = 1.0
MAX_COUNT = 4
MAX_OBJECTS = 4
SUPERSAMPLE = 4
#: Inner radius of the star over its outer one (a regular star has 0.38; fatter arms stay
#: visible at 8 px).
STAR_INNER = 0.5


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float

    @property
    def extent(self) -> float:
        return SIZE_PIXELS[self.size]

    def box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the bounding box."""
        half = self.extent / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]


def _star_vertices() -> np.ndarray:
    """The star's 10 vertices (10, 2), point up, around the origin (outer radius 1)."""
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5  # (10,)
    radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_STAR = _star_vertices()
_STAR_LOW, _STAR_HIGH = _STAR.min(axis=0), _STAR.max(axis=0)


def _star_edges() -> np.ndarray:
    """(10, 3) lines ``a x + b y + c``, one per edge, positive on the centre's side."""
    start, end = _STAR, np.roll(_STAR, -1, axis=0)
    a, b = -(end[:, 1] - start[:, 1]), end[:, 0] - start[:, 0]
    c = -(a * start[:, 0] + b * start[:, 1])
    return np.stack([a, b, c], axis=1) * np.sign(c)[:, None]


_STAR_EDGES = _star_edges()


def _inside_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether box points (u, v) in [-1, 1]^2 fall in the star stretched to fill the box.

    The star is star-shaped around its centre: a point is inside when it lies on the
    centre's side of the one edge its angle points at.
    """
    x = (u + 1) / 2 * (_STAR_HIGH[0] - _STAR_LOW[0]) + _STAR_LOW[0]
    y = (v + 1) / 2 * (_STAR_HIGH[1] - _STAR_LOW[1]) + _STAR_LOW[1]
    sector = (np.floor((np.arctan2(y, x) + np.pi / 2) / (np.pi / 5)).astype(int)) % 10
    a, b, c = _STAR_EDGES[sector].transpose(-1, *range(sector.ndim))  # each like x
    return a * x + b * y + c >= 0


def inside_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether normalised points ``(u, v)`` in the box [-1, 1]^2 (v down) fall in ``shape``."""
    if shape == "square":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "triangle":  # apex at the top centre, base along the bottom edge
        return (v <= 1) & (np.abs(u) <= (v + 1) / 2)
    if shape == "star":
        return _inside_star(u, v)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def coverage(
    shape: str, cx: float, cy: float, extent: float, size: int = IMAGE_SIZE
) -> np.ndarray:
    """Fraction (H, W) of each pixel covered by the shape, from SUPERSAMPLE^2 samples."""
    half = extent / 2
    x0, y0 = max(int(np.floor(cx - half)), 0), max(int(np.floor(cy - half)), 0)
    x1, y1 = min(int(np.ceil(cx + half)), size), min(int(np.ceil(cy + half)), size)
    result = np.zeros((size, size), dtype=np.float32)
    if x1 > x0 and y1 > y0:
        result[y0:y1, x0:x1] = window_coverage(shape, cx, cy, extent, x0, y0, x1 - x0, y1 - y0)
    return result


def window_coverage(
    shape: str, cx: float, cy: float, extent: float, x0: int, y0: int, w: int, h: int
) -> np.ndarray:
    """Coverage (h, w) of a shape on the pixel window whose top-left pixel is (x0, y0)."""
    s = SUPERSAMPLE
    xs = x0 + (np.arange(w * s) + 0.5) / s  # sample positions in pixel units
    ys = y0 + (np.arange(h * s) + 0.5) / s
    half = extent / 2
    u, v = np.broadcast_arrays((xs[None, :] - cx) / half, (ys[:, None] - cy) / half)
    inside = inside_shape(shape, u, v).astype(np.float32)  # (h*s, w*s)
    return inside.reshape(h, s, w, s).sum(axis=(1, 3)) / (s * s)


def render(scene: Scene) -> np.ndarray:
    """The scene as an (H, W, 3) uint8 image: the one renderer for training and tests."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    image[:] = BACKGROUND
    for obj in scene.objects:
        alpha = coverage(obj.shape, obj.cx, obj.cy, obj.extent)[..., None]  # (H, W, 1)
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        image = image * (1 - alpha) + colour * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def fits(obj: Obj) -> bool:
    """Whether the object's box lies inside the image, BORDER pixels from its edges."""
    x0, y0, x1, y1 = obj.box()
    return min(x0, y0) >= BORDER and max(x1, y1) <= IMAGE_SIZE - BORDER


def separated(a: Obj, b: Obj, gap: float = MIN_GAP) -> bool:
    """Whether two objects' boxes are at least ``gap`` pixels apart along some axis."""
    reach = (a.extent + b.extent) / 2 + gap
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach
