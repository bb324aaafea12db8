"""The run directory: files a person can open, written as the search goes.

Layout (``SCHEMA_VERSION`` 1): ``run.json`` (configuration, versions, device, usage,
timings, result summary), ``candidates.jsonl`` (one line per scored candidate, streamed),
``baseline.png`` (the first candidate: what the user gets without search), ``best.png``,
``best_noise.safetensors`` (the winner's initial noise), ``grid.png`` (the top candidates),
``top/NN.png`` (each of them), ``scaling.png`` and ``report.html`` (see ``report.py``).
docs/run-directory.md documents every field.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisesearch.engine import Usage
from noisesearch.files import write_atomic
from noisesearch.finite import strict_json
from noisesearch.names import safe_token
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
    base = root / f"{stamp}-{safe_token(model)}-{safe_token(condition_slug)}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def write_json(path: Path, data: Any) -> None:
    """Strict JSON: non-finite numbers become ``null`` plus a flag (``noisesearch.finite``)."""
    try:  # almost always finite: strict_json's walk of a run.json cost more than writing it
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:  # NaN or an infinity: null plus the flag (noisesearch.finite)
        if not isinstance(data, dict):
            raise
        text = json.dumps(strict_json(data), indent=2, sort_keys=False, allow_nan=False)
    write_atomic(path, (text + "\n").encode())


class CandidatesWriter:
    """Engine listener that appends each scored candidate to ``candidates.jsonl``, with
    ``nfe_spent``: the run's NFEs when it was scored (the x axis of ``scaling.png``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("w", encoding="utf-8")

    def on_candidates(self, candidates: Sequence[Candidate], usage: Usage) -> None:
        """One write and one flush per batch: a killed run loses at most its last batch's lines
        (and a half-written last line, which ``runs.read_candidates`` drops)."""
        encode = json.JSONEncoder(allow_nan=False).encode
        lines = []
        for candidate in candidates:
            row = {**candidate.to_json(), "nfe_spent": usage.nfe}
            try:  # almost always finite: strict_json's walk of every row cost more than the model
                lines.append(encode(row))
            except ValueError:  # NaN or an infinity: null plus the flag (noisesearch.finite)
                lines.append(encode(strict_json(row)))
        if lines:
            self._handle.write("\n".join(lines) + "\n")
            self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()


def package_versions() -> dict[str, str]:
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:
    """Read once per process: package metadata costs ~3 ms a name, which a bench of many
    small cells pays on every run folder otherwise."""
    versions = []
    for name in _VERSIONED:
        try:
            versions.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(versions)


@functools.lru_cache(maxsize=1)
def _platform() -> str:
    return platform.platform()  # ~1 ms (uname, libc version): once per process


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": _platform(),
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


class Pictures:
    """Each image tensor of a run folder converted (and PNG-encoded) once: the best image is
    also ``top/01.png`` and a tile of ``grid.png``, and encoding is most of a small run's
    writing. Keyed by the tensor object; the files are byte-identical to uncached writes."""

    def __init__(self) -> None:
        self._made: dict[int, tuple[torch.Tensor, Any, bytes | None]] = {}  # id -> (tensor, PIL, PNG)

    def picture(self, image: torch.Tensor) -> Any:
        if id(image) not in self._made:
            self._made[id(image)] = (image, to_pil(image), None)  # the tensor keeps its id taken
        return self._made[id(image)][1]

    def png(self, image: torch.Tensor) -> bytes:
        import io

        picture = self.picture(image)
        data = self._made[id(image)][2]
        if data is None:
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            data = buffer.getvalue()
            self._made[id(image)] = (image, picture, data)
        return data


def save_png(image: torch.Tensor, path: Path, pictures: Pictures | None = None) -> None:
    write_atomic(path, (pictures or Pictures()).png(image))


@functools.lru_cache(maxsize=1)
def _grid_font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def save_grid(
    candidates: Sequence[Candidate], path: Path, columns: int = 4, evaluator: str | None = None,
    pictures: Pictures | None = None,
) -> None:
    """The candidates side by side, best first, with gaps between them and, under each, its
    rank and objective (and the evaluator's score, when one is named)."""
    import io

    from PIL import Image, ImageDraw

    shown = [c for c in candidates if c.image is not None]
    if not shown:
        return
    pictures = pictures or Pictures()
    tiles = [pictures.picture(c.image) for c in shown]
    font = _grid_font()
    width, height = tiles[0].size
    gap, line = 8, 15
    caption = line * (2 if evaluator else 1) + 4
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new(
        "RGB", (gap + columns * (width + gap), gap + rows * (height + caption + gap)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for i, (tile, candidate) in enumerate(zip(tiles, shown)):
        x = gap + (i % columns) * (width + gap)
        y = gap + (i // columns) * (height + caption + gap)
        sheet.paste(tile, (x, y))
        draw.text((x, y + height + 2), f"#{i + 1}  {candidate.objective:.4g}", fill="black", font=font)
        if evaluator and evaluator in candidate.scores:
            text = f"judge {candidate.scores[evaluator]:.4g}"
            draw.text((x, y + height + 2 + line), text, fill=(90, 90, 90), font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def save_noise(
    noise: torch.Tensor | None,
    image: torch.Tensor,
    path: Path,
    recipe: dict[str, Any],
    latents: torch.Tensor | None = None,
    latents_info: dict[str, Any] | None = None,
) -> None:
    """The winner's initial noise and exact image (float, before PNG rounding), for replay; and,
    for a model with a pipeline, that noise as the pipeline's ``latents=`` (metadata
    ``"latents"``: its scaling, the scheduler and arguments, and whether it regenerates the winner
    alone)."""
    from safetensors.torch import save

    tensors = {"image": image.contiguous()}
    metadata = {"recipe": json.dumps(recipe)}
    if noise is not None:
        tensors["noise"] = noise.contiguous()
    if latents is not None:
        tensors["latents"] = latents.detach().cpu().clone()  # its own storage (may view noise)
        metadata["latents"] = json.dumps(latents_info or {})
    write_atomic(path, save(tensors, metadata=metadata))


def load_best(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
