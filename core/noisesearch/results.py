"""The run directory: files a person can open, written as the search goes.

Layout (``SCHEMA_VERSION`` 1): ``run.json`` (configuration, versions, device, usage,
timings, result summary), ``candidates.jsonl`` (one line per scored candidate, streamed),
``baseline.png`` (the first candidate: what the user gets without search), ``best.png``,
``best_noise.safetensors`` (the winner's initial noise), ``grid.png`` (the top candidates).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisesearch.engine import Usage
from noisesearch.types import Candidate

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 1
#: Images smaller than this (in pixels) are enlarged, nearest-neighbour, when saved.
MIN_SAVED_SIZE = 128
_VERSIONED = ("noisesearch", "torch", "diffusers", "transformers", "open_clip_torch", "numpy")


def default_run_dir(root: Path, model: str, condition_slug: str) -> Path:
    """A fresh folder ``root/<timestamp>-<model>-<condition>``, suffixed if taken."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{stamp}-{model}-{condition_slug}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


class CandidatesWriter:
    """Engine listener that appends each scored candidate to ``candidates.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("w", encoding="utf-8")

    def on_candidates(self, candidates: Sequence[Candidate], usage: Usage) -> None:
        for candidate in candidates:
            self._handle.write(json.dumps(candidate.to_json()) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def to_pil(image: torch.Tensor) -> Any:
    """A (3, H, W) tensor in [0, 1] to a PIL image, enlarged if tiny."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu()
    picture = Image.fromarray(array.numpy(), mode="RGB")
    scale = max(1, -(-MIN_SAVED_SIZE // max(picture.size)))
    if scale > 1:
        picture = picture.resize(
            (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
        )
    return picture


def save_png(image: torch.Tensor, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def save_grid(candidates: Sequence[Candidate], path: Path, columns: int = 4) -> None:
    """The candidates side by side, best first, each with its rank and objective under it."""
    import io

    from PIL import Image, ImageDraw

    tiles = [to_pil(c.image) for c in candidates if c.image is not None]
    if not tiles:
        return
    width, height = tiles[0].size
    caption = 14
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * width, rows * (height + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, candidate) in enumerate(zip(tiles, candidates)):
        x, y = (i % columns) * width, (i // columns) * (height + caption)
        sheet.paste(tile, (x, y))
        draw.text((x + 2, y + height + 1), f"#{i + 1} {candidate.objective:.3g}", fill="black")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def save_noise(noise: torch.Tensor, path: Path, recipe: dict[str, Any]) -> None:
    from safetensors.torch import save

    data = save({"noise": noise.contiguous()}, metadata={"recipe": json.dumps(recipe)})
    write_atomic(path, data)
