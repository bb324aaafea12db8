"""Choosing a torch device and dtype from what a user typed, with one rule for every model
and verifier: ``None`` or ``"auto"`` means the best available (CUDA if present, half
precision there; the CPU and float32 otherwise, where half precision is slow)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from noisesearch.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: Accepted dtype spellings.
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


def resolve_device(device: str | None) -> torch.device:
    """``None`` or ``"auto"``: the first CUDA device if there is one, else the CPU."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError("device", f"not a torch device: {device!r} ({exc})") from None


def resolve_dtype(
    dtype: str | None, device: torch.device | str, accelerator_dtype: str = "float16"
) -> torch.dtype:
    """``None`` or ``"auto"``: ``accelerator_dtype`` on CUDA, float32 elsewhere."""
    import torch

    name = str(dtype or "auto").lower().removeprefix("torch.")
    if name == "auto":
        name = accelerator_dtype if torch.device(device).type == "cuda" else "float32"
    if name not in DTYPE_NAMES:
        raise ConfigError("dtype", f"must be one of auto, float32, float16, bfloat16; got {dtype!r}")
    return getattr(torch, DTYPE_NAMES[name])


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")
