"""img2img: the search starts from an init image noised to the level that ``strength`` implies.

As diffusers' img2img pipelines do it: of ``steps`` steps, the last ``int(steps * strength)`` run
(``get_timesteps``: ``t_start = steps - int(steps * strength)``; SD3's and FLUX's round the other
way, ``t_start = int(steps - steps * strength)``), and the state at the first of them
is the image's latents noised to that level, ``a * z_image + b * noise`` (the scheduler's
``add_noise``). The searched thing is that noise. The image is encoded once, by the pipeline's own
``image_processor`` and VAE, with the posterior's mean (the pipelines sample the posterior with
their generator; the mean keeps the start the same for every candidate), then scaled as each
family's pipeline scales it (the inverse of decoding).

Checked before loading (exit 2): the file exists and is an image, its size is one the pipeline can
make (a multiple of the VAE's) and the run's size if one is given, ``strength`` is in (0, 1], and
the family has img2img here (SD 1.x/2.x, SD-XL, SD3, FLUX.1; not PixArt or DiT).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisesearch.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: The families whose adapters run img2img (named in the refusal).
FAMILIES = "SD 1.x/2.x, SD-XL, SD3 and FLUX.1"
OPTION = "init_image (--init-image)"
STRENGTH = "strength (--strength)"
#: ``strength`` when an init image is given without one (the pipelines' default).
DEFAULT_STRENGTH = 0.8


def check(
    init_image: Any,
    strength: Any,
    supported: bool,
    family: str,
    multiple: int | None,
    height: int | None,
    width: int | None,
) -> tuple[int, int] | None:
    """The options' values and the image file's header; returns the image's ``(height, width)``
    (None without an init image)."""
    if init_image is None:
        if strength is not None:
            raise ConfigError(STRENGTH, "is img2img's: give an --init-image too, or leave it out")
        return None
    strength = DEFAULT_STRENGTH if strength is None else strength
    number = isinstance(strength, (int, float)) and not isinstance(strength, bool)
    if not number or not 0.0 < float(strength) <= 1.0:
        raise ConfigError(STRENGTH, f"must be a number in (0, 1] (the share of the steps that run "
                          f"from the noised image), got {strength!r}")
    if not supported:
        raise ConfigError(OPTION, f"img2img runs on the {FAMILIES} pipelines; {family}'s has none "
                          f"here: leave --init-image out")
    path = Path(str(init_image)).expanduser()
    if not path.is_file():
        raise ConfigError(OPTION, f"{str(path)!r}: no such file")
    size = image_size(path)
    image_height, image_width = size
    if multiple:
        for name, value in (("height", image_height), ("width", image_width)):
            if value % multiple:
                raise ConfigError(OPTION, f"{str(path)!r} is {image_width}x{image_height} pixels; its {name} "
                                  f"must be a multiple of {multiple} for this pipeline: resize or crop it")
    for name, wanted, got in (("height", height, image_height), ("width", width, image_width)):
        if wanted is not None and wanted != got:
            raise ConfigError(OPTION, f"{str(path)!r} is {image_width}x{image_height} pixels, but the run's "
                              f"{name} is {wanted}: give an image of the run's size, or leave "
                              f"height and width out (the image's size is used)")
    return size


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, from its header; a clear error if it is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(OPTION, f"{str(path)!r} is not an image PIL can read "
                          f"({type(exc).__name__})") from None
    return height, width


def sha256(path: str | Path) -> str:
    """The file's SHA-256, recorded in the winner's recipe; replay refuses another image."""
    digest = hashlib.sha256()
    with Path(path).expanduser().open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def start_index(steps: int, strength: float, flow: bool = False) -> int:
    """Index of the grid level the run starts at (the pipelines' ``t_start``): ``steps -
    int(steps * strength)`` (SD, SD-XL), ``int(steps - steps * strength)`` (SD3, FLUX: ``flow``)."""
    if flow:
        kept = steps - int(max(steps - min(steps * strength, steps), 0))
    else:
        kept = min(int(steps * strength), steps)
    if kept < 1:
        raise ConfigError(STRENGTH, f"{strength} of {steps} steps runs no step; raise --strength "
                          f"or --steps (at least {steps} x strength >= 1)")
    return steps - kept


def encode(pipe: Any, path: str | Path, height: int, width: int, device: Any) -> torch.Tensor:
    """The image's VAE posterior mean ``(1, C, h, w)`` (before the family's scaling), float32."""
    import torch
    from PIL import Image

    with Image.open(Path(path).expanduser()) as image:
        pixels = pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
    vae = pipe.vae
    with torch.no_grad():
        posterior = vae.encode(pixels.to(device, vae.dtype)).latent_dist  # pixels: (1, 3, H, W) in [-1, 1]
        return posterior.mode().float()
