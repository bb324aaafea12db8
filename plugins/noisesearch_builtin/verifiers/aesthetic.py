"""LAION improved aesthetic predictor (Schuhmann 2022), a text-to-image verifier of Ma et al. 2025.

A linear-regression MLP (no activations) on L2-normalised CLIP ViT-L/14 (OpenAI) image
embeddings, trained on SAC + LAION-logos + AVA ratings: ``sac+logos+ava1-l14-linearMSE.pth``
from github.com/christophschuhmann/improved-aesthetic-predictor. It predicts a mean human
rating on a roughly 1-10 scale (most photographs land between 4 and 7).

The weights are a plain state dict (``layers.0.weight`` ... ``layers.7.bias``), read with
``torch.load(weights_only=True)`` or from safetensors, never as an arbitrary pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch import Condition, hookimpl
from noisesearch_builtin.verifiers.clip_backbone import DEFAULT_ARCHITECTURE, DEFAULT_PRETRAINED

if TYPE_CHECKING:
    import torch

    from noisesearch.registry import Register

#: A Hugging Face mirror of the GitHub release (same file name; the GitHub repository is not a
#: model hub). ``trl-lib/ddpo-aesthetic-predictor`` / ``aesthetic-model.pth`` has the same layout.
DEFAULT_HUB_REPO = "camenduru/improved-aesthetic-predictor"
DEFAULT_HUB_FILENAME = "sac+logos+ava1-l14-linearMSE.pth"

#: The published MLP: indices of its Linear layers in ``nn.Sequential`` (1, 3, 5 are Dropout).
LINEAR_INDICES = (0, 2, 4, 6, 7)
HIDDEN_SIZES = (1024, 128, 64, 16, 1)


def build_mlp(input_size: int) -> torch.nn.Sequential:
    """The predictor's architecture, so that the published keys load unchanged."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(input_size, 1024), nn.Dropout(0.2),
        nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or ``torch.load(weights_only=True)`` (refuses pickled code)."""
    import torch

    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"aesthetic: {path} holds a {type(state).__name__}, not a state dict")
    # Accept "layers.0.weight" (published), "0.weight" (a bare Sequential) and "model."-prefixed keys.
    cleaned = {}
    for key, value in state.items():
        key = key.removeprefix("model.").removeprefix("module.")
        cleaned[key if key.startswith("layers.") else f"layers.{key}"] = value
    return cleaned


class AestheticPredictor:
    """LAION aesthetic score (about 1-10) of CLIP ViT-L/14 image embeddings; needs nothing.

    :param weights: a local MLP file (``.pth`` state dict or ``.safetensors``); default: download
        ``hub_filename`` from the Hugging Face repository ``hub_repo``.
    :param hub_repo: Hugging Face repository holding the published weights.
    :param hub_filename: file name in ``hub_repo``.
    :param model: open_clip architecture of the embeddings; the published MLP expects ViT-L-14.
    :param pretrained: open_clip pretrained tag or local checkpoint file; the published MLP
        expects ``openai``.
    :param device: torch device; default: CUDA if available, else the CPU.
    :param dtype: dtype of the CLIP model (the MLP runs in float32); default: float16 on CUDA,
        float32 on the CPU.
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    #: The score is differentiable in the image (``score_with_grad``: the ``gradient`` strategy).
    differentiable: ClassVar[bool] = True

    def __init__(
        self,
        weights: str | None = None,
        hub_repo: str = DEFAULT_HUB_REPO,
        hub_filename: str = DEFAULT_HUB_FILENAME,
        model: str = DEFAULT_ARCHITECTURE,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        from noisesearch_builtin.verifiers.clip_backbone import load_clip

        if weights is None:
            from huggingface_hub import hf_hub_download

            weights = hf_hub_download(hub_repo, hub_filename)
        state = {key: value.float() for key, value in load_state_dict(weights).items()}
        if "layers.0.weight" not in state:
            raise ValueError(
                f"aesthetic: {weights} is not an aesthetic-predictor MLP (no layers.0.weight); "
                f"keys: {sorted(state)[:6]}"
            )
        input_size = int(state["layers.0.weight"].shape[1])
        self.backbone = load_clip(model, pretrained, device, dtype)
        embed_dim = self.backbone.embed_dim
        if embed_dim is not None and embed_dim != input_size:
            raise ValueError(
                f"aesthetic: the MLP in {weights} takes {input_size}-d embeddings but CLIP {model!r} "
                f"gives {embed_dim}-d ones; the published MLP needs ViT-L-14 (768)"
            )
        self.mlp = build_mlp(input_size)
        self.mlp.load_state_dict({key.removeprefix("layers."): value for key, value in state.items()})
        self.mlp.to(self.backbone.device).eval().requires_grad_(False)

    def score(
        self,
        images: torch.Tensor,
        condition: Condition,
        trajectory: Mapping[float, Any] | None = None,
    ) -> torch.Tensor:
        import torch

        embeddings = self.backbone.encode_images(images)  # (B, D), L2-normalised, float32
        with torch.inference_mode():
            return self.mlp(embeddings)[:, 0]

    def score_with_grad(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        """``score`` with its autograd graph kept (B,)."""
        return self.mlp(self.backbone.encode_images(images, grad=True))[:, 0]


@hookimpl
def register_verifiers(register: Register) -> None:
    register("aesthetic", AestheticPredictor)
