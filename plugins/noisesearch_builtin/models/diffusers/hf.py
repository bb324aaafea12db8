"""The ``hf`` model: any supported diffusers pipeline, by hub id or local folder.

``--model hf:<id-or-folder>`` becomes the model ``hf`` with the option ``path`` (the core does
that); this factory reads the pipeline's ``model_index.json`` and hands over to the adapter of its
``_class_name``. Planning calls :func:`describe` first, so an unsupported pipeline, a missing
folder, an option the family does not take, or a prompt given to a class-conditional pipeline
fails before any weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisesearch.errors import ConfigError, IncompatibleError
from noisesearch.registry import describe_parameters
from noisesearch_builtin.models.diffusers import img2img, index, lora
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
        if key in ("init_image", "strength") and key not in valid:  # a family without img2img
            option = img2img.OPTION if key == "init_image" else img2img.STRENGTH
            raise ConfigError(option, f"img2img runs on the {img2img.FAMILIES} pipelines; {path!r} "
                              f"holds a {adapter.__name__.removesuffix('Model')} pipeline: leave it out")
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
    name = type(pipeline).__name__
    if not module.startswith("diffusers"):
        base = _supported_base(type(pipeline))
        if base is not None:  # a user's subclass: its own changes to sampling would not be searched
            raise IncompatibleError(
                f"a {name} is a subclass of diffusers' {base}, which noisesearch searches with "
                f"{base}'s own sampling, not the subclass's: pass {base}(**pipe.components) to search "
                f"it so")
        return None
    if name not in SUPPORTED_PIPELINES:
        hint = ""
        if "Img2Img" in name:
            family = name.replace("Img2Img", "")
            hint = (f" For img2img, search the text-to-image pipeline with an init image: "
                    f"{family}(**pipe.components) and model_options={{'init_image': ..., 'strength': ...}}.")
        raise IncompatibleError(f"a {name} cannot be searched. Supported pipeline classes: "
                                f"{', '.join(sorted(SUPPORTED_PIPELINES))}.{hint}")
    adapter = SUPPORTED_PIPELINES[name]
    given = {k: v for k, v in options.items() if v is not None}
    for key in ("path", "variant"):
        if key in given:
            raise ConfigError(key, "not for a pipeline already in memory")
    _check_options(adapter, "<in-memory pipeline>", given)
    return adapter.from_pipeline(pipeline, **given)


def _supported_base(cls: type) -> str | None:
    """The supported diffusers pipeline class that ``cls`` derives from, if any."""
    for base in cls.__mro__[1:]:
        if (base.__module__ or "").startswith("diffusers") and base.__name__ in SUPPORTED_PIPELINES:
            return base.__name__
    return None


def normalize_options(**options: Any) -> dict[str, Any]:
    """The options as ``run.json`` records them: local files and folders (``path``, ``init_image``,
    ``lora`` entries) as absolute paths, so that replay, ``--resume`` and ``--config run.json`` from
    another directory mean the same files (a relative ``pipes/sd`` there would be read as a hub id,
    or be another folder). Paths that do not exist are left as given: the checks refuse them."""
    out = dict(options)
    for key in ("path", "init_image"):
        value = out.get(key)
        if isinstance(value, str) and value:
            out[key] = _absolute(value)
    entries = out.get("lora")
    if isinstance(entries, (str, list, tuple)) and entries:
        given = [entries] if isinstance(entries, str) else list(entries)
        resolved = [_absolute_lora(entry) for entry in given]
        out["lora"] = resolved[0] if isinstance(entries, str) else resolved
    return out


def _absolute(path: str) -> str:
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def _absolute_lora(entry: Any) -> Any:
    """``PATH[:SCALE]`` with a local ``PATH`` made absolute (the scale kept as written)."""
    if not isinstance(entry, str) or not entry.strip():
        return entry
    text = entry.strip()
    spec = lora.parse(text)[0]
    if not text.startswith(spec.path) or not lora.looks_local(spec.path):
        return entry
    return _absolute(spec.path) + text[len(spec.path):]


def options_of(path: str | None = None, **_: Any) -> type[DiffusersModel]:
    """Where ``**options`` go (``noisesearch models hf``, ``models hf:PATH``): the adapter of the
    pipeline at ``path``, or without one the options every adapter shares."""
    from noisesearch_builtin.models.diffusers.base import DiffusersModel

    return adapter_for(path) if path else DiffusersModel


hf_pipeline.describe = describe  # type: ignore[attr-defined]  # traits depend on the path
hf_pipeline.options_of = options_of  # type: ignore[attr-defined]  # the adapter's options, listed
hf_pipeline.normalize_options = normalize_options  # type: ignore[attr-defined]  # recorded paths
hf_pipeline.wrap = wrap  # type: ignore[attr-defined]  # search(model=pipe): a pipeline in memory
