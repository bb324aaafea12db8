"""Network definitions shared by the training script and the built-in plugins.

Kept tiny on purpose: the flow model must sample thousands of candidates per second on a
laptop CPU, and stay weak enough that a single sample is often the wrong digit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from noisesearch_builtin.digits import IMAGE_SIZE, NUM_CLASSES

PIXELS = IMAGE_SIZE * IMAGE_SIZE


def level_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the noise level, (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=sigma.device) / half)
    angles = 1000.0 * sigma[:, None].to(torch.float32) * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class DigitsFlowNet(nn.Module):
    """Class-conditional rectified-flow velocity model on flattened 8x8 digits.

    Predicts ``v = eps - x0`` for ``x_sigma = (1 - sigma) x0 + sigma eps``. Label
    ``NUM_CLASSES`` is the null label used for classifier-free guidance.
    """

    def __init__(self, hidden: int = 256, depth: int = 3, embed_dim: int = 64) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.label_embedding = nn.Embedding(NUM_CLASSES + 1, embed_dim)
        layers: list[nn.Module] = [nn.Linear(PIXELS + 2 * embed_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, PIXELS))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # x: (B, 64), sigma: (B,), labels: (B,) -> velocity (B, 64)
        features = torch.cat(
            [x, level_embedding(sigma, self.embed_dim), self.label_embedding(labels)], dim=1
        )
        return self.net(features)


class DigitsMLPClassifier(nn.Module):
    """The search verifier's classifier: an MLP on the 64 pixels (inputs in [-1, 1])."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(PIXELS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 1, 8, 8) in [-1, 1] -> logits (B, 10)
        return self.net(images.flatten(1))


class DigitsConvClassifier(nn.Module):
    """The independent evaluator: a small convolutional network, a different architecture
    from the verifier's, trained on the other half of the data."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * channels, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 1, 8, 8) in [-1, 1] -> logits (B, 10)
        return self.head(self.features(images).flatten(1))
