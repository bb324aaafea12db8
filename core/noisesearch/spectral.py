"""Low-frequency subspaces of a noise, through an orthonormal 2-D DCT-II per channel.

A noise ``z`` is read as ``(C, H, W)`` (:func:`layout`); its DCT-II coefficients are
``Z = A_H z A_W^T`` with ``A_n`` the orthonormal ``n x n`` DCT-II matrix. The *band* ``(h, w)``
is the block ``Z[:, :h, :w]`` of the lowest frequencies. Replacing it by coefficients ``c``,
``z' = z - P z + B c`` (``P`` the projection on the band, ``B`` its basis), keeps the rest of
``z`` as it was. Because the transform is orthonormal, the band and its complement of a standard
normal ``z`` are independent standard normals: with ``c ~ N(0, I)`` drawn apart, ``z'`` is again
exactly ``N(0, I)``. The evolution strategy searches ``c`` (Spectral Evolution Search).

Everything is computed in float64 on the CPU, so that a recipe's coefficients (JSON floats,
exact doubles) give the same noise bit for bit at replay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: The transform a subspace recipe names (the only one so far).
TRANSFORM = "dct-ii"


def layout(shape: Sequence[int]) -> tuple[int, int, int]:
    """How a latent of ``shape`` is read as ``(channels, H, W)``: the last two dimensions are
    spatial and the leading ones channels; a flat latent of ``s * s`` values (the digits model's
    8x8 image) is one ``s x s`` channel."""
    dims = [int(d) for d in shape]
    if len(dims) >= 2:
        return math.prod(dims[:-2]), dims[-2], dims[-1]
    side = math.isqrt(dims[0]) if len(dims) == 1 else 0
    if side < 1 or side * side != dims[0]:
        raise ValueError(f"a latent of shape {tuple(dims)} has no spatial layout (needs (..., H, W) "
                         f"or a flat square)")
    return 1, side, side


def dct_basis(n: int, k: int) -> torch.Tensor:
    """The first ``k`` rows ``(k, n)`` of the orthonormal DCT-II matrix, float64:
    ``A[f, x] = sqrt((1 if f == 0 else 2) / n) cos(pi (2x + 1) f / (2n))``."""
    import torch

    f = torch.arange(k, dtype=torch.float64)[:, None]
    x = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (2 * x + 1) * f / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] = math.sqrt(1.0 / n)
    return basis


def band_coefficients(noise: torch.Tensor, grid: Sequence[int], band: Sequence[int]) -> torch.Tensor:
    """The band's coefficients ``(C * h * w,)`` (float64) of one noise read as ``grid``."""
    import torch

    channels, height, width = grid
    h, w = band
    z = noise.detach().to("cpu", torch.float64).reshape(channels, height, width)
    return (dct_basis(height, h) @ z @ dct_basis(width, w).T).reshape(-1)


def with_band(
    noise: torch.Tensor, grid: Sequence[int], band: Sequence[int], coefficients: torch.Tensor
) -> torch.Tensor:
    """``noise`` (any shape holding ``grid``) with its band replaced by ``coefficients``
    ``(C * h * w,)``; float64 on the CPU, the shape of ``noise``."""
    import torch

    channels, height, width = grid
    h, w = band
    a, b = dct_basis(height, h), dct_basis(width, w)  # (h, H), (w, W)
    z = noise.detach().to("cpu", torch.float64).reshape(channels, height, width)
    c = torch.as_tensor(coefficients, dtype=torch.float64).reshape(channels, h, w)
    kept = z - a.T @ (a @ z @ b.T) @ b  # the complement of the band, as drawn
    return (kept + a.T @ c @ b).reshape(noise.shape)
