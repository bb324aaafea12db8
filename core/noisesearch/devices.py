"""Choosing a torch device and dtype from what a user typed, with one rule for every model
and verifier: ``None`` or ``"auto"`` means the best available (CUDA if present, half
precision there; the CPU and float32 otherwise, where half precision is slow)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def check_device(device: str | None, field: str = "device") -> None:
    """Refuse a device this machine does not have, before anything loads or is written:
    ``cuda`` without a GPU, ``cuda:99`` beyond the GPUs there are, ``meta`` (no data)."""
    if device in (None, "auto"):
        return
    resolved = resolve_device(str(device))
    import torch

    kind = resolved.type
    if kind == "meta":
        raise ConfigError(field, "'meta' tensors hold no data: a search cannot run there; "
                          "use cpu, cuda[:N] or auto")
    if kind == "cpu":
        return
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(field, "this machine has no MPS (Apple GPU) device; use cpu or auto")
        return
    backend = getattr(torch, kind, None)
    available = backend is not None and getattr(backend, "is_available", lambda: False)()
    count = backend.device_count() if available else 0
    if count == 0:
        raise ConfigError(field, f"this machine has no {kind} device (torch sees none); "
                          f"use cpu or auto")
    if resolved.index is not None and resolved.index >= count:
        raise ConfigError(field, f"{device!r}: this machine has {count} {kind} device(s), "
                          f"numbered 0..{count - 1}")


def resolve_dtype(
    dtype: str | None, device: torch.device | str, accelerator_dtype: str = "float16"
) -> torch.dtype:
    """``None`` or ``"auto"``: ``accelerator_dtype`` on CUDA, float32 elsewhere."""
    import torch

    name = check_dtype_name(dtype)
    if name == "auto":
        name = check_dtype_name(accelerator_dtype) if torch.device(device).type == "cuda" else "float32"
    return getattr(torch, DTYPE_NAMES[name])


def check_dtype_name(dtype: Any) -> str:
    """The ``dtype`` option's name (``"auto"`` for None), refused if it names no dtype: a string
    check, so planning can refuse it without importing torch."""
    name = str(dtype or "auto").lower().removeprefix("torch.")
    if name != "auto" and name not in DTYPE_NAMES:
        raise ConfigError("dtype", f"must be one of auto, float32, float16, bfloat16; got {dtype!r}")
    return name


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")
