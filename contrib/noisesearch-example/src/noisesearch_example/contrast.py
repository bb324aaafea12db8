"""A verifier that prefers contrast: the standard deviation of each image's grey values.

Needs nothing but the images (no prompt, label or trajectory), so it works with every model.
Simple on purpose: it shows the verifier contract, not a good judge of images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch
    from noisesearch import Condition

#: ITU-R BT.601 luma weights of R, G and B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class ContrastVerifier:
    """Higher for images with more contrast: the standard deviation of their grey values.

    :param luma: weight R, G and B as perceived brightness (ITU-R BT.601 luma) rather than
        averaging them equally.
    """

    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, luma: bool = True) -> None:
        self.luma = bool(luma)

    def grey(self, images: torch.Tensor) -> torch.Tensor:
        """Grey values ``(B, H, W)`` of images ``(B, 3, H, W)`` in ``[0, 1]``."""
        import torch

        if not self.luma:
            return images.float().mean(dim=1)
        weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=images.device)
        return torch.einsum("bchw,c->bhw", images.float(), weights)

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self.grey(images).flatten(1).std(dim=1, correction=0)  # (B,)
