"""The two classifiers shipped with the embedded digits model.

They were trained on disjoint halves of the data with different architectures: search with
``digits-classifier`` and judge with ``digits-evaluator`` to see how far a search fools the
verifier it optimises (verifier hacking, Ma et al. 2025, section 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition, hookimpl
from noisesearch_builtin.models.digits import load_network

if TYPE_CHECKING:
    import torch

    from noisesearch.registry import Register


class _DigitsClassifier:
    requires: ClassVar[frozenset[str]] = frozenset({"label"})
    #: The score is differentiable in the image (``score_with_grad``: the ``gradient`` strategy).
    differentiable: ClassVar[bool] = True
    network_name: ClassVar[str]
    weights_name: ClassVar[str]

    def __init__(self, device: str = "cpu", weights: str | None = None) -> None:
        import torch

        from noisesearch_builtin import digits
        from noisesearch_builtin.digits import networks

        network_class = getattr(networks, self.network_name)
        path = weights or getattr(digits, self.weights_name)
        self.network = load_network(path, network_class, device)
        if any(isinstance(layer, torch.nn.Conv2d) for layer in self.network.modules()):
            # oneDNN's own layout on CPUs: the evaluator's conv net runs ~15% faster on a batch
            # of 9 images (its scores move by ~1e-6, as with any other batch composition)
            self.network = self.network.to(memory_format=torch.channels_last)
        self.device = device

    def log_probs(self, images: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Log-probabilities (B, 10) for images (B, 3, 8, 8) in [0, 1] (dark ink on white);
        with ``grad``, differentiable in the images (autograd on)."""
        import torch

        inputs = 1.0 - 2.0 * images.mean(dim=1, keepdim=True)  # back to ink in [-1, 1]
        with torch.inference_mode(not grad):
            return self.network(inputs.to(self.device)).log_softmax(dim=1)

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, Any] | None = None,
    ) -> torch.Tensor:
        return self.log_probs(images)[:, int(condition.label)]

    def score_with_grad(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        """``score`` with its autograd graph kept (B,)."""
        return self.log_probs(images, grad=True)[:, int(condition.label)]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The most likely digit of each image, (B,)."""
        return self.log_probs(images).argmax(dim=1)

    def score_and_predict(
        self, images: torch.Tensor, condition: Condition
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``score`` and ``predict`` from one forward pass, (B,) each: as the held-out evaluator,
        the run's verdicts then cost no second call."""
        log_probs = self.log_probs(images)  # (B, 10)
        return log_probs[:, int(condition.label)], log_probs.argmax(dim=1)


class DigitsClassifier(_DigitsClassifier):
    """Log-probability of the requested digit under the embedded MLP classifier (half A).

    :param device: torch device to run on.
    :param weights: a safetensors file to load instead of the shipped weights.
    """

    network_name = "DigitsMLPClassifier"
    weights_name = "CLASSIFIER_WEIGHTS"


class DigitsEvaluator(_DigitsClassifier):
    """Independent judge: a convolutional digit classifier trained on the other half (B).

    :param device: torch device to run on.
    :param weights: a safetensors file to load instead of the shipped weights.
    """

    network_name = "DigitsConvClassifier"
    weights_name = "EVALUATOR_WEIGHTS"


@hookimpl
def register_verifiers(register: Register) -> None:
    register("digits-classifier", DigitsClassifier)
    register("digits-evaluator", DigitsEvaluator)
