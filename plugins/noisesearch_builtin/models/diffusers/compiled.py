"""The ``compile`` model option: ``torch.compile`` of the denoising network (UNet or transformer).

``compile=MODE`` (``default``, ``reduce-overhead``: CUDA graphs, for small batches,
``max-autotune``) compiles the network in place (``nn.Module.compile``) with ``dynamic=False``:
one graph per input shape. A search keeps the shape fixed: the adapter declares
``static_batch``, and the engine pads every denoiser batch to the run's batch size (the last,
smaller batch of a call repeats its last row; ``noisesearch.units``) and keeps only the real
rows. A padded solve is recorded as run in a batch of the padded size (the recipe's solve op
``batch``), so replay, which pads a row back into a batch of that size, meets the same graph and
the same kernels: the winner replays exactly.

``compile_backend`` is torch.compile's backend (``inductor``, the default, which needs a C++
compiler on the CPU; ``eager`` traces with dynamo and runs the captured graph unoptimised: the
tests use it). The mode is passed only to inductor, the backend that reads it.

Checked before loading (``check``): an unknown mode, a backend that is not a name, a backend
without ``compile``, and ``cpu_offload=sequential`` (accelerate's per-submodule hooks move weights
inside every forward, which a compiled graph cannot hold) are refused, naming the option; when
the model is built, before its weights load (``check_backend``), a backend torch does not know
and inductor without its code generator (a C++ compiler on the CPU, Triton on CUDA).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from noisesearch.errors import ConfigError

#: torch.compile's modes, as ``--model-opt compile=MODE`` takes them.
MODES = ("default", "reduce-overhead", "max-autotune")
#: torch.compile's default backend.
DEFAULT_BACKEND = "inductor"


def mode(value: Any) -> str | None:
    """``compile`` as one of ``MODES`` or ``None`` (off); ``true`` means ``default``."""
    if value in (None, False, "false", "none", "off", ""):
        return None
    if value is True or value == "true":
        return "default"
    if isinstance(value, str) and value in MODES:
        return value
    raise ConfigError("compile", f"must be one of {', '.join(MODES)} (or false), got {value!r}")


def check(compile: Any, compile_backend: Any, cpu_offload: str | None) -> str | None:
    """The ``compile`` and ``compile_backend`` options, before anything loads; returns the mode."""
    chosen = mode(compile)
    if compile_backend is not None:
        if not isinstance(compile_backend, str) or not compile_backend.strip():
            raise ConfigError("compile_backend", f"must be a torch.compile backend name such as "
                              f"inductor or eager, got {compile_backend!r}")
        if chosen is None:
            raise ConfigError("compile_backend", "only with --model-opt compile=MODE "
                              f"({', '.join(MODES)})")
    if chosen is not None and cpu_offload == "sequential":
        raise ConfigError("compile", "cannot be combined with cpu_offload=sequential: its hooks move "
                          "every submodule's weights during the forward; use cpu_offload=model or "
                          "leave compile off")
    return chosen


def check_backend(backend: str, device: Any) -> None:
    """A backend torch.compile knows, with what it needs on ``device``: inductor generates C++
    on the CPU (a compiler) and Triton kernels on CUDA. Imports torch: called by the adapter
    before the weights load, not while planning. Without this, the first forward would fail
    deep in the search."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ConfigError("compile_backend", f"unknown torch.compile backend {backend!r}; known: "
                          f"{', '.join(sorted(known))}")
    if backend != DEFAULT_BACKEND:
        return
    kind = getattr(device, "type", str(device))
    if kind == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as exc:  # noqa: BLE001 - any failure to find one means the same
            raise ConfigError("compile", f"inductor on the CPU needs a C++ compiler ({exc}); install "
                              f"one (g++ or clang++) or use --model-opt compile_backend=eager") from None
    elif kind == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError("compile", "inductor on CUDA needs Triton, which this torch install lacks; "
                              "install triton or use another compile_backend")


def apply(network: Any, chosen: str, backend: str) -> None:
    """Compile ``network`` in place: its ``__call__`` runs the compiled graph, its attributes
    (``config``, ``dtype``) stay the module's own."""
    kwargs: dict[str, Any] = {"backend": backend, "dynamic": False}
    if backend == DEFAULT_BACKEND:  # the only backend that reads a mode (eager warns and ignores it)
        kwargs["mode"] = chosen
    network.compile(**kwargs)


def cuda_graph_safe(denoise: Callable[..., Any]) -> Callable[..., Any]:
    """``denoise`` for ``reduce-overhead``: CUDA graphs return their outputs in static buffers
    that the next replay overwrites, so each call starts a new graph step
    (``torch.compiler.cudagraph_mark_step_begin``) and returns a copy of its ``x0_hat``, which the
    solver keeps across steps (a captured ``x0_hat`` of a sample-predicting network is the
    network's own output)."""
    import torch

    @functools.wraps(denoise)
    def stepped(*args: Any, **kwargs: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        return denoise(*args, **kwargs).clone()

    return stepped


def describe(chosen: str | None, backend: str) -> dict[str, Any] | None:
    """What run.json records of the compilation (None: not compiled)."""
    if chosen is None:
        return None
    return {"mode": chosen, "backend": backend, "dynamic": False,
            "padding": "every denoiser batch padded to the run's batch size by repeating its last "
                       "row; only the real rows are kept; solve ops record the padded batch"}
