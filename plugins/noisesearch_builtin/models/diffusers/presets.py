"""Named presets: released checkpoints with the sampler settings the paper (or the model card) uses.

A preset is its family's adapter with a hub id and defaults filled in; every option can still be
overridden (``--model-opt guidance_scale=5``, ``--model-opt path=./my-finetune``). Steps: Ma et
al. 2025 search FLUX.1-dev and PixArt-Sigma with 30 steps per candidate and DiT/SiT with 50; the
others use their pipelines' defaults, and the distilled few-step models their model cards' (no
guidance; FLUX.1-schnell 4 steps, SD-Turbo and SDXL-Turbo 1).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch.errors import ConfigError
from noisesearch_builtin.models.diffusers.dit import DiTModel
from noisesearch_builtin.models.diffusers.flux import FluxModel
from noisesearch_builtin.models.diffusers.pixart import PixArtSigmaModel
from noisesearch_builtin.models.diffusers.sd3 import StableDiffusion3Model
from noisesearch_builtin.models.diffusers.sdxl import StableDiffusionXLModel
from noisesearch_builtin.models.diffusers.stable_diffusion import StableDiffusionModel
from noisesearch_builtin.shapes import PIPELINE_DIR, PROMPTS_FILE

if TYPE_CHECKING:
    from noisesearch import Condition

#: ``shapes``' default guidance scale, from the N=1 sweep of the shipped pipeline over the
#: held-out suite (three noise seeds, 20 steps; docs/shapes.md): exact match single objects /
#: compositional / all 0.69 / 0.25 / 0.33 at 2, 0.75 / 0.27 / 0.36 at 3, 0.67 / 0.27 / 0.36 at 4
#: (stronger guidance empties more single-object images). ``--model-opt guidance_scale=...``
#: overrides it.
SHAPES_GUIDANCE_SCALE = 3.0
#: ``shapes``' default DDIM steps per candidate.
SHAPES_STEPS = 20
#: ``shapes``' candidates per batch on a CPU: the default search's 16 in one batch (a 32 px
#: model is far from filling memory; fewer, larger forwards are faster).
SHAPES_CPU_BATCH_SIZE = 16
#: What ``noisesearch run`` with no options asks ``shapes`` for: two objects, a count and
#: colour binding, so that one sample is often wrong and search has room to help.
SHAPES_DEFAULT_PROMPT = "two red circles and a blue square"


class StableDiffusion15(StableDiffusionModel):
    """Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5): 512 px, 50 steps, CFG 7.5."""

    default_path: ClassVar[str | None] = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class StableDiffusion21(StableDiffusionModel):
    """Stable Diffusion 2.1 (stabilityai/stable-diffusion-2-1): v-prediction, 768 px, 50 steps, CFG 7.5."""

    default_path: ClassVar[str | None] = "stabilityai/stable-diffusion-2-1"


class SDTurbo(StableDiffusionModel):
    """SD-Turbo (stabilityai/sd-turbo): distilled SD 2.1, 512 px, 1 step, no guidance."""

    default_path: ClassVar[str | None] = "stabilityai/sd-turbo"
    default_steps: ClassVar[int] = 1
    default_guidance_scale: ClassVar[float] = 0.0


class StableDiffusionXLBase(StableDiffusionXLModel):
    """SD-XL 1.0 base (stabilityai/stable-diffusion-xl-base-1.0): 1024 px, 50 steps, CFG 5."""

    default_path: ClassVar[str | None] = "stabilityai/stable-diffusion-xl-base-1.0"


class SDXLTurbo(StableDiffusionXLModel):
    """SDXL-Turbo (stabilityai/sdxl-turbo): distilled SD-XL, 512 px, 1 step, no guidance."""

    default_path: ClassVar[str | None] = "stabilityai/sdxl-turbo"
    default_steps: ClassVar[int] = 1
    default_guidance_scale: ClassVar[float] = 0.0


class StableDiffusion3Medium(StableDiffusion3Model):
    """SD3 Medium (stabilityai/stable-diffusion-3-medium-diffusers): 1024 px, 28 steps, CFG 7."""

    default_path: ClassVar[str | None] = "stabilityai/stable-diffusion-3-medium-diffusers"


class Flux1Dev(FluxModel):
    """FLUX.1-dev (black-forest-labs/FLUX.1-dev): 1024 px, 30 steps (the paper's), guidance 3.5."""

    default_path: ClassVar[str | None] = "black-forest-labs/FLUX.1-dev"


class Flux1Schnell(FluxModel):
    """FLUX.1-schnell (black-forest-labs/FLUX.1-schnell): distilled, 1024 px, 4 steps, 256 T5 tokens."""

    default_path: ClassVar[str | None] = "black-forest-labs/FLUX.1-schnell"
    default_steps: ClassVar[int] = 4
    default_guidance_scale: ClassVar[float] = 0.0  # no guidance input
    default_max_sequence_length: ClassVar[int] = 256


class PixArtSigmaXL1024(PixArtSigmaModel):
    """PixArt-Sigma XL 1024 (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS): 30 steps (the paper's), CFG 4.5."""

    default_path: ClassVar[str | None] = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"


class DiTXL256(DiTModel):
    """DiT-XL/2 256 px (facebook/DiT-XL-2-256): ImageNet labels, 50 steps (the paper's), CFG 4."""

    default_path: ClassVar[str | None] = "facebook/DiT-XL-2-256"


class DiTXL512(DiTModel):
    """DiT-XL/2 512 px (facebook/DiT-XL-2-512): ImageNet labels, 50 steps, CFG 4."""

    default_path: ClassVar[str | None] = "facebook/DiT-XL-2-512"


class Shapes(StableDiffusionModel):
    """Embedded 32 px text-to-image model of coloured shapes: a tiny SD pipeline; no download.

    A real ``StableDiffusionPipeline`` (CLIP text encoder, UNet, VAE, DDIM) trained on the shapes
    world and shipped in the package, run by the same adapter as any SD 1.x pipeline.

    Prompts use the world's small vocabulary ("two red circles and a blue square", "a yellow
    triangle above a green star"); others are refused before loading, with the words it knows.
    Searched on ``shapes-clip``, judged by ``shapes-judge`` (exact, rule-based).
    """

    default_path: ClassVar[str | None] = str(PIPELINE_DIR)
    default_steps: ClassVar[int] = SHAPES_STEPS
    default_guidance_scale: ClassVar[float] = SHAPES_GUIDANCE_SCALE
    default_verifiers: ClassVar[tuple[str, ...]] = ("shapes-clip",)
    default_evaluator: ClassVar[str | None] = "shapes-judge"
    default_prompt: ClassVar[str | None] = SHAPES_DEFAULT_PROMPT
    #: The held-out suite (GenEval's six categories), the bench's ``--suite model``.
    prompt_suite: ClassVar[str] = str(PROMPTS_FILE)
    cpu_batch_size: ClassVar[int] = SHAPES_CPU_BATCH_SIZE
    cuda_dtype: ClassVar[str] = "float32"  # at 32 px half precision saves nothing
    quiet_loading: ClassVar[bool] = True

    @classmethod
    def describe(cls, path: str | None = None, **options: Any) -> dict[str, Any]:
        if path in (None, cls.default_path) and not (PIPELINE_DIR / "model_index.json").is_file():
            raise ConfigError(
                "model",
                f"the shapes pipeline is missing from {PIPELINE_DIR} (a broken install?); "
                "reinstall noisesearch, or train it: python -m noisesearch_builtin.shapes.train",
            )
        return {**super().describe(path=path, **options), "default_prompt": cls.default_prompt}

    @classmethod
    def check_condition(cls, condition: Condition) -> Condition:
        """Parse the prompt with the world's grammar before loading: unknown words (listed with
        the vocabulary and the closest words), an empty prompt, a count beyond the limit are
        configuration errors. Runs the canonical caption ("One Circle." -> "a circle")."""
        from noisesearch_builtin.shapes.grammar import PromptError, parse_prompt

        try:
            prompt = parse_prompt(condition.prompt or "")
        except PromptError as error:
            raise ConfigError("prompt", str(error)) from None
        negative = condition.negative_prompt
        if negative:
            _check_words(negative, "negative_prompt")
        return replace(condition, prompt=prompt.text)


def _check_words(text: str, field: str) -> None:
    """Every word of ``text`` is in the shapes vocabulary (a negative prompt need not parse)."""
    import difflib
    import re

    from noisesearch_builtin.shapes.grammar import VOCABULARY

    words = re.sub(r"[.,;!?]", " ", text.lower()).split()
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        hints = [
            f"{w!r}" + (f" (did you mean {' / '.join(map(repr, close))}?)" if close else "")
            for w in unknown
            for close in [difflib.get_close_matches(w, sorted(VOCABULARY), n=3, cutoff=0.5)]
        ]
        raise ConfigError(
            field, f"the shapes world does not know {', '.join(hints)}. Its vocabulary: "
            f"{' '.join(sorted(VOCABULARY))}",
        )


#: Preset name (``--model NAME``) -> factory.
PRESETS: dict[str, type] = {
    "shapes": Shapes,
    "sd15": StableDiffusion15,
    "sd21": StableDiffusion21,
    "sd-turbo": SDTurbo,
    "sdxl": StableDiffusionXLBase,
    "sdxl-turbo": SDXLTurbo,
    "sd3-medium": StableDiffusion3Medium,
    "flux-dev": Flux1Dev,
    "flux-schnell": Flux1Schnell,
    "pixart-sigma": PixArtSigmaXL1024,
    "dit-xl-256": DiTXL256,
    "dit-xl-512": DiTXL512,
}
