"""Memory options, each passed to diffusers' own switch: ``cpu_offload`` (model or sequential),
``vae_slicing``, ``vae_tiling``, ``attention_slicing``. Checked before loading (``check``) and
applied to the loaded pipeline (``apply``) before it is placed on the device.

- ``cpu_offload=model`` (or ``true``): ``enable_model_cpu_offload``: each network moves to the
  accelerator while it runs. ``sequential``: ``enable_sequential_cpu_offload``: every submodule
  does, far slower, least memory. Both need an accelerator (refused on the CPU) and accelerate.
- ``vae_slicing``: the VAE decodes one image at a time (``vae.enable_slicing``).
- ``vae_tiling``: the VAE decodes in overlapping tiles (``vae.enable_tiling``); it changes the
  image slightly at sizes above the VAE's tile size (512 px for SD), as in diffusers.
- ``attention_slicing``: ``enable_attention_slicing`` (true = "auto", "max" or a slice size);
  only the UNet families (SD 1.x/2.x, SD-XL): the transformers' attention has no slicing.
"""

from __future__ import annotations

from typing import Any

from noisesearch.errors import ConfigError

OFFLOAD_MODES = ("model", "sequential")


def offload_mode(value: Any) -> str | None:
    """``cpu_offload`` as ``None``, ``"model"`` or ``"sequential"``."""
    if value in (None, False, "false", "none", "off", ""):
        return None
    if value is True or value in ("true", "model"):
        return "model"
    if value == "sequential":
        return "sequential"
    raise ConfigError("cpu_offload", f"must be model, sequential or false, got {value!r}")


def slice_size(value: Any) -> str | int | None:
    """``attention_slicing`` as diffusers' ``slice_size`` (``None``: off)."""
    if value in (None, False, "false", "none", "off"):
        return None
    if value is True or value in ("true", "auto"):
        return "auto"
    if value == "max" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ConfigError("attention_slicing", f"must be true, auto, max or a positive slice size, got {value!r}")


def check(attention_slicing: Any, slicing_family: bool, family: str) -> None:
    """The values, and attention slicing only where the network has it."""
    if slice_size(attention_slicing) is not None and not slicing_family:
        raise ConfigError("attention_slicing", f"{family}'s transformer has no attention slicing "
                          f"(only the UNet families SD 1.x/2.x and SD-XL); leave it off")


def apply(pipe: Any, vae_slicing: bool, vae_tiling: bool, attention_slicing: Any) -> None:
    """Switch diffusers' own memory options on ``pipe`` (offload is placed by the caller)."""
    vae = pipe.vae
    if vae_slicing:
        vae.enable_slicing()
    if vae_tiling:
        vae.enable_tiling()
    size = slice_size(attention_slicing)
    if size is not None:
        pipe.enable_attention_slicing(size)


def host_available() -> int | None:
    """Bytes of host memory available now (Linux ``MemAvailable``: free plus reclaimable page
    cache; else free pages from ``os.sysconf``), or None where neither can be read. The CPU
    batch size comes from it, as the accelerator's from its free memory."""
    import os

    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # "MemAvailable:  123456 kB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None
