"""The ``hf`` model: any supported diffusers pipeline, by hub id or local folder.

``--model hf:<id-or-folder>`` becomes the model ``hf`` with the option ``path`` (the core does
that); this factory reads the pipeline's ``model_index.json`` and hands over to the adapter of its
``_class_name``. Planning calls :func:`describe` first, so an unsupported pipeline, a missing
folder, an option the family does not take, or a prompt given to a class-conditional pipeline
fails before any weights load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from noisesearch.errors import ConfigError, IncompatibleError
from noisesearch.registry import describe_parameters
from noisesearch_builtin.models.diffusers import index
from noisesearch_builtin.models.diffusers.dit import DiTModel
from noisesearch_builtin.models.diffusers.flux import FluxModel
from noisesearch_builtin.models.diffusers.pixart import PixArtSigmaModel
from noisesearch_builtin.models.diffusers.sd3 import StableDiffusion3Model
from noisesearch_builtin.models.diffusers.sdxl import StableDiffusionXLModel
from noisesearch_builtin.models.diffusers.stable_diffusion import StableDiffusionModel

if TYPE_CHECKING:
    from noisesearch_builtin.models.diffusers.base import DiffusersModel

#: The adapters, one per family; ``model_index.json``'s ``_class_name`` picks one.
ADAPTERS: tuple[type[DiffusersModel], ...] = (
    StableDiffusionModel,
    StableDiffusionXLModel,
    StableDiffusion3Model,
    FluxModel,
    PixArtSigmaModel,
    DiTModel,
)
#: Pipeline class name -> adapter.
SUPPORTED_PIPELINES: dict[str, type[DiffusersModel]] = {
    name: adapter for adapter in ADAPTERS for name in adapter.pipeline_classes
}


def adapter_for(path: str | None) -> type[DiffusersModel]:
    """The adapter that runs the pipeline at ``path`` (a hub id or a local folder)."""
    if not path:
        raise ConfigError("path", "give a hub id or a local pipeline folder: --model hf:<id-or-folder>")
    name = index.pipeline_class_name(path)
    if name not in SUPPORTED_PIPELINES:
        raise IncompatibleError(
            f"{path!r} holds a {name}, which noisesearch cannot run. Supported pipeline classes: "
            f"{', '.join(sorted(SUPPORTED_PIPELINES))}."
        )
    return SUPPORTED_PIPELINES[name]


def _check_options(adapter: type[DiffusersModel], path: str, options: dict[str, Any]) -> None:
    valid = {p.name for p in describe_parameters(adapter)}
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"model hf: option {key!r}",
                f"not an option of {adapter.__name__} (the adapter of {path!r}). "
                f"Valid options: {', '.join(sorted(valid))}.",
            )


def hf_pipeline(
    path: str,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    cpu_offload: bool | str | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    **options: Any,
) -> DiffusersModel:
    """A diffusers pipeline by hub id or folder (--model hf:<id-or-folder>); adapter from model_index.json.

    Supported: StableDiffusionPipeline (SD 1.x/2.x), StableDiffusionXLPipeline,
    StableDiffusion3Pipeline, FluxPipeline, PixArtSigmaPipeline, DiTPipeline. Options left at
    None take the family's default; family-specific options (``max_sequence_length``,
    ``true_cfg_scale``, ``clean_caption``) pass through as keywords.

    :param path: Hugging Face hub id or local folder of the pipeline (``save_pretrained`` layout).
    :param guidance_scale: classifier-free guidance scale (FLUX.1: the embedded guidance); None: the
        family's default.
    :param height: image height in pixels; None: the pipeline's default resolution.
    :param width: image width in pixels; None: the pipeline's default resolution.
    :param device: torch device, or "auto" (CUDA when available, else CPU).
    :param dtype: weights' dtype (float32, float16, bfloat16 or "auto").
    :param cpu_offload: diffusers' CPU offload: "model" (or true) or "sequential" (needs
        accelerate and an accelerator).
    :param variant: weight-file variant to load, e.g. "fp16".
    :param use_safetensors: load only safetensors weights (default true); false also loads
        pickled ``.bin`` weights, which can run code: only for pipelines you trust.
    """
    given = {
        "guidance_scale": guidance_scale, "height": height, "width": width, "device": device,
        "dtype": dtype, "cpu_offload": cpu_offload, "variant": variant,
        "use_safetensors": use_safetensors,
    }
    options = {**{k: v for k, v in given.items() if v is not None}, **options}
    adapter = adapter_for(path)
    _check_options(adapter, path, options)
    return adapter(path=path, **options)


def describe(path: str | None = None, **options: Any) -> dict[str, Any]:
    """Traits of the pipeline at ``path`` for planning, read from its JSON files only."""
    adapter = adapter_for(path)
    assert path is not None
    given = {k: v for k, v in options.items() if v is not None}
    _check_options(adapter, path, given)
    return adapter.describe(path=path, **given)


def wrap(pipeline: Any, **options: Any) -> DiffusersModel | None:
    """A diffusers pipeline object already in memory as a model (``search(model=pipe, ...)``),
    by the adapter of its class; None for an object that is not a diffusers pipeline. Its LoRAs,
    scheduler and offload stay as the user set them; ``options`` are the model's (no ``path``)."""
    module = type(pipeline).__module__ or ""
    if not module.startswith("diffusers"):
        return None
    name = type(pipeline).__name__
    if name not in SUPPORTED_PIPELINES:
        raise IncompatibleError(f"a {name} cannot be searched. Supported pipeline classes: "
                                f"{', '.join(sorted(SUPPORTED_PIPELINES))}.")
    adapter = SUPPORTED_PIPELINES[name]
    given = {k: v for k, v in options.items() if v is not None}
    for key in ("path", "variant"):
        if key in given:
            raise ConfigError(key, "not for a pipeline already in memory")
    _check_options(adapter, "<in-memory pipeline>", given)
    return adapter.from_pipeline(pipeline, **given)


hf_pipeline.describe = describe  # type: ignore[attr-defined]  # traits depend on the path
hf_pipeline.wrap = wrap  # type: ignore[attr-defined]  # search(model=pipe): a pipeline in memory
