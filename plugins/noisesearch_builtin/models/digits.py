"""The embedded default model: class-conditional rectified flow on 8x8 digits.

Ships inside the package (``noisesearch_builtin/digits/weights``) so that ``noisesearch run``
does a real search on a fresh machine, on a CPU, in seconds.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition, hookimpl
from noisesearch.sampling import RectifiedFlow
from noisesearch_builtin.digits import SUITE_FILE

if TYPE_CHECKING:
    import torch

    from noisesearch.registry import Register


def weights_config(path: Any, field: str = "weights") -> dict[str, Any]:
    """The network config stored in a safetensors file's header; a clear error for a missing
    file, a folder, or anything that is not safetensors (a pickle is refused, never loaded)."""
    from pathlib import Path

    from safetensors import safe_open

    from noisesearch import ConfigError

    if not isinstance(path, (str, Path)) or not str(path):
        raise ConfigError(field, f"expected the path of a .safetensors file, got {path!r}")
    if not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "does not exist"
        raise ConfigError(field, f"{str(path)!r} {what}; give a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            config = json.loads((handle.metadata() or {}).get("config", "{}"))
    except Exception as exc:  # truncated, text, a pickle: safetensors reads the header only
        raise ConfigError(field, f"{str(path)!r} is not a safetensors file ({type(exc).__name__}: "
                          f"{exc}); pickled weights are not loaded") from None
    if not isinstance(config, dict):
        raise ConfigError(field, f"{str(path)!r} has no network config in its header")
    return config


def load_network(path: Any, network_class: type, device: str, field: str = "weights") -> Any:
    """Build ``network_class`` from the config stored in a safetensors file and load it."""
    from safetensors.torch import load_file

    from noisesearch import ConfigError

    config = weights_config(path, field)
    try:
        network = network_class(**config)
        network.load_state_dict(load_file(str(path)))
    except (TypeError, RuntimeError, ValueError) as exc:  # another network's weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(field, f"{str(path)!r} does not hold {network_class.__name__} weights "
                          f"({type(exc).__name__}: {first})") from None
    return network.to(device).eval()


class DigitsModel:
    """Embedded 8x8 handwritten-digits flow model (labels 0-9); CPU-fast, deliberately weak.

    :param guidance_scale: classifier-free guidance scale; 1 disables guidance (one forward
        per step), larger values run the conditional and null label in one batched call.
    :param device: torch device to run on.
    :param weights: a safetensors file to load instead of the shipped weights.
    """

    conditioning: ClassVar[str] = "label"
    num_classes: ClassVar[int] = 10
    default_steps: ClassVar[int] = 20
    default_verifiers: ClassVar[tuple[str, ...]] = ("digits-classifier",)
    default_evaluator: ClassVar[str | None] = "digits-evaluator"
    preferred_batch_size: ClassVar[int] = 256
    #: The bench's suite for this model (``noisesearch bench --prompts model``): every label.
    prompt_suite: ClassVar[str] = str(SUITE_FILE)

    def __init__(
        self, guidance_scale: float = 1.0, device: str = "cpu", weights: str | None = None
    ) -> None:
        import torch

        from noisesearch_builtin.digits import FLOW_WEIGHTS, NUM_CLASSES
        from noisesearch_builtin.digits.networks import DigitsFlowNet

        self.guidance_scale = float(guidance_scale)
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.network = load_network(weights or FLOW_WEIGHTS, DigitsFlowNet, device)
        self.null_label = NUM_CLASSES
        self.schedule = RectifiedFlow()
        self.latent_shape = (64,)  # a flattened 8x8 image in [-1, 1], ink = +1

    @classmethod
    def describe(cls, weights: str | None = None, **options: Any) -> dict[str, Any]:
        """Planning: a ``weights`` file is checked (header only) before anything loads."""
        if weights is not None:
            weights_config(weights)
        return {}

    def prepare(self, condition: Condition) -> int:
        return int(condition.label)

    def denoise(self, x: torch.Tensor, sigma: float, prepared: int) -> torch.Tensor:
        import torch

        batch = x.shape[0]  # x: (B, 64)
        labels = torch.full((batch,), prepared, device=x.device, dtype=torch.long)
        if self.guidance_scale == 1.0:
            velocity = self.network(x, torch.full((batch,), sigma, device=x.device), labels)
        else:  # conditional and null label in one batched forward
            doubled = torch.cat([x, x])
            both = torch.cat([labels, torch.full_like(labels, self.null_label)])
            levels = torch.full((2 * batch,), sigma, device=x.device)
            cond, uncond = self.network(doubled, levels, both).chunk(2)
            velocity = uncond + self.guidance_scale * (cond - uncond)
        return x - sigma * velocity  # the net predicts v = eps - x0

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        ink = (x0.reshape(-1, 1, 8, 8) + 1.0) / 2.0  # (B, 1, 8, 8), 1 = full ink
        return (1.0 - ink).clamp(0.0, 1.0).expand(-1, 3, -1, -1)  # dark ink on white


@hookimpl
def register_models(register: Register) -> None:
    register("digits", DigitsModel)
