"""What every diffusers adapter shares: loading, placement, dtypes, the level grid, decoding, memory.

An adapter turns a diffusers pipeline into a :class:`noisesearch.types.Model`: the pipeline's own
``from_pretrained`` loads it (so hub ids, the hub cache, ``HF_HUB_OFFLINE`` and local folders
behave as in diffusers), its own ``encode_prompt`` encodes the condition once per run, and the
adapter calls the denoising network directly, one batched forward per step with classifier-free
guidance inside, returning the clean prediction ``x0_hat`` in the core's noise-level convention.

Conventions (see ``docs/models.md``):

- Latents and the solver state are float32 whatever the weights' dtype (``model.dtype`` is the
  latents' dtype, ``model.weights_dtype`` the networks'): each forward casts its input to the
  weights' dtype and its output back. In float32 this reproduces the pipeline; in half precision
  it is a little more accurate than the pipeline, whose state is rounded to half every step.
- Variance-preserving models: level ``sigma = (t + 1) / T`` for diffusers timestep ``t``
  (:class:`~noisesearch.sampling.VariancePreserving`). ``levels(steps)`` is the grid that
  diffusers' ``DDIMScheduler`` builds from the pipeline's scheduler configuration (spacing,
  ``steps_offset``, ``set_alpha_to_one``), so the core's ``ddim`` solver reproduces the pipeline
  run with DDIM (eta 0). Flow models: level = the flow scheduler's sigma; see ``flow.py``.
- Classifier-free guidance: one forward on the doubled batch, ``[uncond] * B + [cond] * B`` as the
  pipelines order it (DiT: ``[cond] * B + [null] * B``); it is one NFE per candidate per step.
- The safety checker is never loaded or run: images are decoded straight from the VAE.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from noisesearch.devices import check_dtype_name, resolve_device, resolve_dtype
from noisesearch.errors import ConfigError, IncompatibleError
from noisesearch.sampling import VariancePreserving
from noisesearch.weights import hub_unreachable
from noisesearch_builtin.models.diffusers import compiled, guidance, img2img, index, memory, native
from noisesearch_builtin.models.diffusers import lora as lora_loader
from noisesearch_builtin.quiet import quiet_loading

if TYPE_CHECKING:
    import torch

    from noisesearch import Condition
    from noisesearch.sampling import Schedule

#: Candidates per batch where free memory cannot be read (a CPU whose host memory cannot be).
CPU_BATCH_SIZE = 4
#: Upper bound of the automatic batch size.
MAX_BATCH_SIZE = 64
#: Share of the free accelerator memory the automatic batch sizes plan to use.
MEMORY_FRACTION = 0.7
#: Activation bytes of one forward per (token x channel x element size), peak over a block; a
#: deliberately generous bound (attention projections, a 4x MLP, norms, residuals, guidance).
ACTIVATION_FACTOR = 32
#: Peak VAE-decoder bytes per (output pixel x first-block channel x element size).
DECODER_FACTOR = 12
#: Within this many timesteps of an integer, a level's timestep is taken as that integer.
_TIMESTEP_SNAP = 1e-6
#: The scheduler's configuration in a pipeline folder.
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"

#: Option docs shared by every adapter (the base's docstring; the registry reads them through
#: each subclass's `**options`).
COMMON_PARAMS = """
:param path: Hugging Face hub id or local folder of the pipeline (``save_pretrained`` layout);
    presets default to their hub id.
:param guidance_scale: classifier-free guidance scale (FLUX.1: the embedded guidance); None: the
    model's default. Values <= 1 disable guidance: one branch per forward.
:param height: image height in pixels; None: the pipeline's default resolution.
:param width: image width in pixels; None: the pipeline's default resolution.
:param device: torch device, or "auto" (CUDA when available, else CPU).
:param dtype: weights' dtype: float32, float16 or bfloat16, or "auto" (the family's usual half
    precision on CUDA, float32 elsewhere). Latents stay float32.
:param cpu_offload: keep weights on the CPU: "model" (or true) moves each network to the device
    while it runs (diffusers' enable_model_cpu_offload), "sequential" each submodule
    (enable_sequential_cpu_offload: slowest, least memory). Needs an accelerator and accelerate.
:param vae_slicing: decode one image at a time (diffusers' vae.enable_slicing).
:param vae_tiling: decode in overlapping tiles (vae.enable_tiling): for large images.
:param attention_slicing: diffusers' enable_attention_slicing: true ("auto"), "max" or a slice
    size; UNet families only (SD 1.x/2.x, SD-XL).
:param variant: weight-file variant to load, e.g. "fp16" (diffusers' ``variant``).
:param use_safetensors: load only safetensors weights (the default). Pickled weights (``.bin``)
    can run code when loaded: a folder that has only those is refused unless this is false.
:param scheduler: diffusers scheduler class for ``--solver native`` (e.g. DPMSolverMultistepScheduler,
    UniPCMultistepScheduler, EulerAncestralDiscreteScheduler; the "Scheduler" suffix may be left
    out), one that diffusers marks compatible with the pipeline's; None: the pipeline's own.
    Only for --solver native: refused with the core's ddim and heun solvers.
:param scheduler_options: configuration of that scheduler over the pipeline's, e.g.
    ``{"use_karras_sigmas": true}`` or ``{"timestep_spacing": "trailing"}``.
:param guidance_rescale: rescale the guided output towards the conditional branch's standard
    deviation by this fraction (0 to 1; 0: off), as the pipeline's guidance_rescale; SD 1.x/2.x
    and SD-XL only.
:param clip_skip: prompt embeddings from this many CLIP layers before the last, as the pipeline's
    clip_skip; None: the pipeline's default. SD 1.x/2.x and SD-XL only.
:param lora: LoRA adapter(s) as "PATH[:SCALE]" (a .safetensors file, a folder or a hub id; scale
    1 by default), or a list of them (repeat --model-opt lora=...); loaded with diffusers'
    load_lora_weights. Not for PixArt or DiT (their pipelines take no LoRA).
:param init_image: img2img: an image file to start from (--init-image); the search starts at
    the level ``strength`` implies, from the encoded image plus the searched noise, as the
    family's img2img pipeline. Its size is the run's. SD 1.x/2.x, SD-XL, SD3 and FLUX.1.
:param strength: img2img: the share of the steps that run from the noised image (0 < S <= 1;
    --strength), as the img2img pipelines' ``strength``; None: 0.8, their default.
:param compile: torch.compile the denoising network (UNet or transformer) with static shapes:
    "default", "reduce-overhead" (CUDA graphs: small batches) or "max-autotune"; false: off.
    Denoiser batches are padded to the run's batch size (the last row repeated), so one graph
    serves the search; replay stays exact. Pays off on a GPU; not with cpu_offload=sequential.
:param compile_backend: torch.compile's backend for ``compile`` (default "inductor"; "eager"
    traces without code generation and needs no C++ compiler).
"""


class DiffusersModel:
    """Base of the diffusers adapters (not registered itself)."""

    __doc__ = (__doc__ or "") + "\n" + COMMON_PARAMS  # the shared options, documented once

    #: ``model_index.json`` ``_class_name`` values this adapter runs; the first is loaded.
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    conditioning: ClassVar[str] = "prompt"
    num_classes: ClassVar[int | None] = None
    class_names: ClassVar[tuple[str, ...] | None] = None
    default_verifiers: ClassVar[tuple[str, ...]] = ()
    default_evaluator: ClassVar[str | None] = None
    default_steps: ClassVar[int] = 50
    default_guidance_scale: ClassVar[float] = 7.5
    #: Presets: the hub id used when ``path`` is not given.
    default_path: ClassVar[str | None] = None
    #: Weights' dtype for ``dtype="auto"`` on CUDA.
    cuda_dtype: ClassVar[str] = "float16"
    #: Candidates per batch (and images per VAE decode) where free memory cannot be read.
    cpu_batch_size: ClassVar[int] = CPU_BATCH_SIZE
    #: Whether the denoiser has diffusers' attention slicing (the UNet families).
    attention_slicing_family: ClassVar[bool] = False
    #: Whether the pipeline takes ``guidance_rescale`` and ``clip_skip`` (the UNet families).
    guidance_options_family: ClassVar[bool] = False
    #: The text encoders whose hidden states ``clip_skip`` indexes, and how many of their last
    #: layers the pipeline's ``encode_prompt`` passes over besides (``guidance.check_depth``).
    clip_skip_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    clip_skip_reserved: ClassVar[int] = 0
    #: Whether this adapter runs img2img (``init_image``, ``strength``).
    img2img_family: ClassVar[bool] = False
    #: img2img's first step rounded as the SD3 and FLUX pipelines round it (``img2img.start_index``).
    img2img_flow_rounding: ClassVar[bool] = False
    #: Whether the network was trained on ``num_train_timesteps`` discrete timesteps, which bound
    #: ``--steps`` (DDPM-trained families; flow models take any number of steps).
    discrete_timesteps: ClassVar[bool] = False
    #: Options only ``--solver native`` reads: planning refuses them with the core's solvers.
    native_solver_options: ClassVar[tuple[str, ...]] = ("scheduler", "scheduler_options")
    #: Load without diffusers' and transformers' progress bars and advice (unless ``--verbose``).
    quiet_loading: ClassVar[bool] = True
    #: Puts back the adapters of a pipeline the model was given (``lora.load_onto``); None otherwise.
    _lora_restore: Callable[[], None] | None = None

    # -- traits, before loading ------------------------------------------------------------------
    @classmethod
    def describe(cls, path: str | None = None, **options: Any) -> dict[str, Any]:
        """Traits for the core's planning; checks that ``path`` holds a pipeline this adapter runs.

        A preset's own hub id is not read (its traits are known); any other path is, which for a
        hub id reads ``model_index.json`` through the hub cache.
        """
        path = cls._resolve_path(path)
        if path != cls.default_path or not index.is_local(path):
            cls.check_pipeline(path)  # a preset's hub id too: not cached and no network fails here
        cls.check_before_loading(path, **options)
        traits = cls._traits(path)
        if options.get("init_image") is not None:  # a strength that runs no step: refused before loading
            strength = options.get("strength")
            strength = img2img.DEFAULT_STRENGTH if strength is None else float(strength)
            traits["check_steps"] = functools.partial(img2img.start_index, strength=strength,
                                                      flow=cls.img2img_flow_rounding)
        if options.get("scheduler") is not None or index.is_local(path):  # a preset's hub id: not read
            # lazily: resolving the scheduler class imports diffusers, which planning a run with
            # the core's own solvers (or refusing a bad prompt) must not pay for
            traits["native_order"] = functools.partial(cls._native_order, path, options.get("scheduler"))
        # lazily too, read only for --solver native with a strategy that solves from mid-path
        traits["native_restartable"] = functools.partial(cls._native_restartable, path,
                                                         options.get("scheduler"))
        if cls.discrete_timesteps:  # --steps beyond the training timesteps: refused while planning
            extra = options.get("scheduler_options")
            config = index.read_json(path, SCHEDULER_CONFIG, required=False) or {}
            traits["max_steps"] = max_steps({**config, **(extra if isinstance(extra, dict) else {})})
        traits["check_negative_prompt"] = functools.partial(cls._check_negative_prompt_of, path,
                                                            dict(options))
        return traits

    # -- the negative prompt: refused where no branch would read it ------------------------------
    @classmethod
    def _check_negative_prompt_of(cls, path: str, options: dict[str, Any], negative: str | None) -> None:
        """:meth:`check_negative_prompt` before loading, from the options and the folder."""
        scale = options.get("guidance_scale")
        cls._check_guided(negative, float(cls.default_guidance_scale if scale is None else scale))

    def check_negative_prompt(self, negative: str | None) -> None:
        """Refuse a negative prompt that no branch reads (run.json would claim an effect it never
        had), as the run is planned: a pipeline in memory is checked by its built model."""
        self._check_guided(negative, self.guidance_scale)

    @staticmethod
    def _check_guided(negative: str | None, guidance_scale: float, embedded: bool = False) -> None:
        """Classifier-free guidance reads the negative prompt in its unconditional branch, which runs
        only at a scale above 1 and not in a guidance-distilled network (the scale is its input)."""
        if negative is None:
            return
        if embedded:
            raise ConfigError("negative_prompt", "this pipeline's network takes its guidance scale as an "
                              "input (guidance-distilled, e.g. LCM): no unconditional branch runs, so a "
                              "negative prompt has no effect; leave it out")
        if guidance_scale <= 1.0:
            raise ConfigError("negative_prompt", f"guidance_scale {guidance_scale:g} runs no unconditional "
                              f"branch (guidance needs a scale above 1), so a negative prompt has no effect; "
                              f"raise --model-opt guidance_scale above 1, or leave it out")

    @classmethod
    def _native_order(cls, path: str, scheduler: str | None) -> int:
        """Network calls per step of the native scheduler (2: Heun, KDPM2), for the budget check."""
        config = index.read_json(path, SCHEDULER_CONFIG, required=False) or {}
        own = config.get("_class_name")
        if not isinstance(own, str):
            return 1
        return int(getattr(native.scheduler_class(own, scheduler), "order", 1))

    @classmethod
    def _native_restartable(cls, path: str, scheduler: str | None) -> bool:
        """Whether the native scheduler can start a solve mid-path (PNDM cannot); True where the
        scheduler configuration cannot be read (the solver refuses it then, when it runs)."""
        config = index.read_json(path, SCHEDULER_CONFIG, required=False) or {}
        own = config.get("_class_name")
        if not isinstance(own, str):
            return True
        return native.restartable(native.scheduler_class(own, scheduler))

    @classmethod
    def check_before_loading(
        cls,
        path: str,
        height: int | None = None,
        width: int | None = None,
        device: str | None = None,
        dtype: Any = None,
        cpu_offload: bool | None = None,
        variant: str | None = None,
        use_safetensors: bool = True,
        scheduler: str | None = None,
        scheduler_options: dict[str, Any] | None = None,
        lora: str | list[str] | None = None,
        attention_slicing: Any = None,
        guidance_rescale: Any = 0.0,
        clip_skip: Any = None,
        init_image: Any = None,
        strength: Any = None,
        compile: Any = None,  # noqa: A002 - the option's name
        compile_backend: Any = None,
        **options: Any,
    ) -> None:
        """The option checks that need only JSON and file names: image size against the
        pipeline's VAE (and patch) multiple, CPU offload without an accelerator, a weight
        variant or safetensors weights the folder does not have, a scheduler the pipeline's
        is not compatible with or options it does not have, a compile mode or backend that
        cannot work, a dtype name that is none."""
        check_dtype_name(dtype)
        multiple = cls._size_multiple(path)
        for field, value in (("height", height), ("width", width)):
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(field, f"must be a positive number of pixels, got {value!r}")
            if multiple and value % multiple:
                raise ConfigError(field, f"must be a multiple of {multiple} for {path!r}, got {value}")
        memory.check(attention_slicing, cls.attention_slicing_family, cls.__name__)
        compiled.check(compile, compile_backend, memory.offload_mode(cpu_offload))
        guidance.check(guidance_rescale, clip_skip, cls.guidance_options_family, cls.__name__)
        configs = [index.read_json(path, f"{encoder}/config.json", required=False) or {}
                   for encoder in cls.clip_skip_encoders]
        depths = [config.get("num_hidden_layers") for config in configs]
        guidance.check_depth(clip_skip, depths, cls.clip_skip_reserved)
        img2img.check(init_image, strength, cls.img2img_family, cls.__name__, multiple, height, width)
        if memory.offload_mode(cpu_offload) and resolve_device(device).type == "cpu":
            raise ConfigError("cpu_offload", "offloading to the CPU needs an accelerator device, "
                              "and this run is on the CPU")
        if index.is_local(path):
            index.check_local_weights(path, variant, use_safetensors)
        lora_loader.check(lora_loader.parse(lora), cls.pipeline_classes[0])
        if scheduler is not None or scheduler_options:
            config = index.read_json(path, SCHEDULER_CONFIG, required=False) or {}
            own = config.get("_class_name")
            if isinstance(own, str):
                chosen = native.scheduler_class(own, scheduler)
                native.check_scheduler_options(chosen, scheduler_options or {})

    @classmethod
    def _size_multiple(cls, path: str) -> int | None:
        """Height and width must be multiples of this: the VAE's downscaling (times the
        patch size of transformer families); ``None`` where the JSON cannot be read."""
        vae = index.read_json(path, "vae/config.json", required=False)
        channels = (vae or {}).get("block_out_channels")
        if not isinstance(channels, list) or not channels:
            return None
        return 2 ** (len(channels) - 1) * cls._patch_multiple(path)

    @classmethod
    def _patch_multiple(cls, path: str) -> int:
        return 1

    @classmethod
    def _traits(cls, path: str) -> dict[str, Any]:
        return {
            "conditioning": cls.conditioning,
            "num_classes": cls.num_classes,
            "class_names": cls.class_names,
            "default_verifiers": cls.default_verifiers,
            "default_evaluator": cls.default_evaluator,
            "default_steps": cls.default_steps,
            "native_solver": True,  # the pipeline's scheduler, with --solver native
            "native_solver_options": cls.native_solver_options,
        }

    @classmethod
    def check_pipeline(cls, path: str) -> str:
        """The pipeline class of ``path``; an error if this adapter does not run it."""
        name = index.pipeline_class_name(path)
        if name not in cls.pipeline_classes:
            raise IncompatibleError(
                f"{path!r} holds a {name}, but this model runs {', '.join(cls.pipeline_classes)}; "
                f"use --model hf:{path} to pick the adapter from its model_index.json"
            )
        return name

    @classmethod
    def _resolve_path(cls, path: str | None) -> str:
        path = path or cls.default_path
        if not path:
            raise ConfigError("path", "give a hub id or a local pipeline folder (--model hf:<id-or-folder>)")
        return str(path)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pipeline(cls, pipeline: Any, **options: Any) -> DiffusersModel:
        """Wrap a pipeline object already in memory instead of loading one (benchmarks with random
        weights at real sizes, or a pipeline the caller has modified).

        ``options`` are the model's options except ``path`` and ``variant``; ``dtype="auto"`` keeps
        the pipeline's dtype, anything else casts it.
        """
        model = cls.__new__(cls)
        model._given_pipeline = pipeline
        model.__init__(**options)  # type: ignore[misc]
        return model

    def __init__(
        self,
        path: str | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        cpu_offload: bool | str = False,
        variant: str | None = None,
        use_safetensors: bool = True,
        scheduler: str | None = None,
        scheduler_options: dict[str, Any] | None = None,
        lora: str | list[str] | None = None,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        attention_slicing: bool | str | int = False,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        init_image: str | None = None,
        strength: float | None = None,
        compile: bool | str = False,  # noqa: A002 - the option's name, as --model-opt compile=MODE
        compile_backend: str | None = None,
    ) -> None:
        family = type(self).__name__
        self.compile_mode = compiled.check(compile, compile_backend, memory.offload_mode(cpu_offload))
        self.compile_backend = compile_backend or compiled.DEFAULT_BACKEND
        if self.compile_mode is not None:  # before the weights load
            compiled.check_backend(self.compile_backend, resolve_device(device))
        size = img2img.check(init_image, strength, self.img2img_family, family, None, height, width)
        if size is not None:  # the run makes images of the init image's size
            height, width = size
        self.init_image = init_image
        self.strength = img2img.DEFAULT_STRENGTH if strength is None else float(strength)
        memory.check(attention_slicing, self.attention_slicing_family, type(self).__name__)
        guidance.check(guidance_rescale, clip_skip, self.guidance_options_family, type(self).__name__)
        self.guidance_rescale = float(guidance_rescale)
        self.clip_skip = clip_skip
        self._memory = (bool(vae_slicing), bool(vae_tiling), attention_slicing)
        self.use_safetensors = bool(use_safetensors)
        self.loras = lora_loader.parse(lora)
        lora_loader.check(self.loras, self.pipeline_classes[0])
        self.scheduler_name = scheduler
        self.scheduler_options = dict(scheduler_options or {})
        self._load(path, guidance_scale, device, dtype, cpu_offload, variant)
        if clip_skip is not None:  # checked again: a pipeline in memory has no JSON to read before
            encoders = [getattr(self.pipe, name, None) for name in self.clip_skip_encoders]
            configs = [getattr(encoder, "config", None) for encoder in encoders]
            depths = [getattr(config, "num_hidden_layers", None) for config in configs]
            guidance.check_depth(clip_skip, depths, self.clip_skip_reserved)
        self._setup(height, width)
        if self.compile_mode is not None:  # placed and offloaded: the graph sees the final module
            compiled.apply(self._denoiser(), self.compile_mode, self.compile_backend)
            if self.compile_mode == "reduce-overhead":  # CUDA graphs reuse their output buffers
                self.denoise = compiled.cuda_graph_safe(self.denoise)  # type: ignore[method-assign]
        self._init_latents: torch.Tensor | None = None  # (1, *latent_shape): img2img's image
        self.input_hashes: dict[str, str] = {}  # files the result depends on: replay checks them
        if init_image is not None:
            encoded = img2img.encode(self.pipe, init_image, self.height, self.width, self.device)
            # Contiguous: the VAE's output may be channels-last, and a state of that layout would
            # meet other kernels than its replay (a zero-padded contiguous batch), by ~1e-6.
            self._init_latents = self._image_latents(encoded).contiguous()
            self.input_hashes["init_image"] = img2img.sha256(init_image)
        own = type(self.pipe.scheduler).__name__
        self._native_class = native.scheduler_class(own, scheduler)  # checked again: in-memory pipelines
        native.check_scheduler_options(self._native_class, self.scheduler_options)
        self.native_order = int(getattr(self._native_class, "order", 1))  # Heun: 2 (the budget check)
        # traits planning reads from a pipeline in memory, as describe() gives them from a folder
        self.native_restartable = native.restartable(self._native_class)
        self.max_steps = (max_steps({**dict(self.pipe.scheduler.config), **self.scheduler_options})
                          if self.discrete_timesteps else None)

    def _load(
        self,
        path: str | None,
        guidance_scale: float | None,
        device: str,
        dtype: str,
        cpu_offload: bool | str,
        variant: str | None,
    ) -> None:
        """Load the pipeline with its own ``from_pretrained`` and place it on the device."""
        import torch

        self.device = resolve_device(device)
        self.cpu_offload = memory.offload_mode(cpu_offload)  # None, "model" or "sequential"
        if self.cpu_offload and self.device.type == "cpu":
            raise ConfigError("cpu_offload", "offloading to the CPU needs an accelerator device")
        self.dtype = torch.float32  # latents and solver state
        self.guidance_scale = float(self.default_guidance_scale if guidance_scale is None else guidance_scale)
        given = self.__dict__.pop("_given_pipeline", None)
        if given is not None:  # from_pipeline()
            self.pipe = given
            self.path = str(path or getattr(given, "name_or_path", None) or "<in-memory pipeline>")
            current = self._denoiser().dtype
            self.weights_dtype = current if dtype in (None, "auto") else resolve_dtype(dtype, self.device, "")
            if self.weights_dtype != current:
                self.pipe.to(dtype=self.weights_dtype)
        else:
            self.path = self._resolve_path(path)
            name = self.pipeline_classes[0]
            if path is not None and self.path != self.default_path:
                name = self.check_pipeline(self.path)
            self.weights_dtype = resolve_dtype(dtype, self.device, self.cuda_dtype)
            kwargs: dict[str, Any] = {_dtype_keyword(): self.weights_dtype, **self._load_kwargs()}
            kwargs["use_safetensors"] = getattr(self, "use_safetensors", True)
            if not index.is_local(self.path) and hub_unreachable():
                kwargs["local_files_only"] = True  # planning found it cached: skip the retries
            if variant:
                kwargs["variant"] = variant
            import diffusers

            try:
                with quiet_loading(self.quiet_loading):
                    self.pipe = getattr(diffusers, name).from_pretrained(self.path, **kwargs)
            except (OSError, ValueError) as exc:  # missing files, no network, wrong variant
                raise ConfigError("path", _loading_error(self.path, exc, kwargs)) from None
        self.pipe.set_progress_bar_config(disable=True)
        loras = getattr(self, "loras", [])
        with quiet_loading(self.quiet_loading):  # before placement and offload
            if given is None:
                lora_loader.load(self.pipe, loras, self.quiet_loading)
            else:  # the user's pipeline: the user's adapters stay, ours leave with the model (close)
                self._lora_restore = lora_loader.load_onto(self.pipe, loras, self, self.quiet_loading)
        memory.apply(self.pipe, *getattr(self, "_memory", (False, False, None)))
        for module in self._modules().values():
            module.eval()  # from_pretrained does this; a pipeline built in memory is in training mode
        if self.cpu_offload == "sequential":
            self.pipe.enable_sequential_cpu_offload(device=self.device)
        elif self.cpu_offload:
            self.pipe.enable_model_cpu_offload(device=self.device)
        else:
            for component, module in self._modules().items():
                parked = self._parks_text_encoders() and component.startswith("text_encoder")
                module.to("cpu" if parked else self.device)
        vae = self.pipe.vae
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae.to(torch.float32)  # SD-XL's VAE overflows in float16; diffusers upcasts it too

    def _load_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments of a family (e.g. no safety checker)."""
        return {}

    def _setup(self, height: int | None, width: int | None) -> None:
        """Family-specific: ``schedule``, ``latent_shape``, guidance switches."""
        raise NotImplementedError

    def _modules(self) -> dict[str, torch.nn.Module]:
        import torch

        return {k: v for k, v in self.pipe.components.items() if isinstance(v, torch.nn.Module)}

    def _parks_text_encoders(self) -> bool:
        """On CUDA the text encoders wait on the CPU between encodings (T5-XXL alone is ~9.5 GB),
        leaving that memory to larger candidate batches."""
        return self.device.type == "cuda" and not getattr(self, "cpu_offload", False)

    @contextmanager
    def _text_encoders_on_device(self) -> Iterator[None]:
        if not self._parks_text_encoders():
            yield
            return
        import torch

        encoders = [m for name, m in self._modules().items() if name.startswith("text_encoder")]
        for module in encoders:
            module.to(self.device)
        try:
            yield
        finally:
            for module in encoders:
                module.to("cpu")
            torch.cuda.empty_cache()

    def _resolution(
        self, height: int | None, width: int | None, default: int, multiple: int
    ) -> tuple[int, int]:
        """Pixel size ``(height, width)``, each a positive multiple of ``multiple``."""
        size = {
            "height": default if height is None else int(height),
            "width": default if width is None else int(width),
        }
        for field, value in size.items():
            if value <= 0 or value % multiple:
                raise ConfigError(field, f"must be a positive multiple of {multiple} here, got {value}")
        return size["height"], size["width"]

    # -- the Model protocol ----------------------------------------------------------------------
    schedule: Schedule
    latent_shape: tuple[int, ...]

    def close(self) -> None:
        """Give a pipeline the model was given (``from_pipeline``) its adapters back as they were:
        the LoRAs of the ``lora`` option deleted, the user's active again with their scales. Also
        done when the model is dropped (after ``search(model=pipe)``), or when the pipeline is
        wrapped again; the model then refuses to run. Nothing to do for a pipeline it loaded."""
        if self._lora_restore is not None:
            self._lora_restore()

    def prepare(self, condition: Condition) -> Any:
        """Encode the condition once per run (both guidance branches), with the pipeline's own
        ``encode_prompt``."""
        import torch

        lora_loader.check_applied(self._lora_restore)
        with torch.no_grad(), self._text_encoders_on_device():
            return self._encode(condition)

    def _encode(self, condition: Condition) -> Any:
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, sigma: float, prepared: Any) -> torch.Tensor:
        raise NotImplementedError

    def levels(self, steps: int) -> list[float]:
        raise NotImplementedError

    # -- the pipeline's own scheduler (--solver native) ------------------------------------------
    def native_solver(self, steps: int) -> native.NativeSolver:
        """The pipeline's scheduler (or the ``scheduler`` option's) as a solver over ``steps`` steps."""
        config, cls, options = self.pipe.scheduler.config, self._native_class, self.scheduler_options
        return native.NativeSolver(
            make=lambda: cls.from_config(config, **options),
            steps=steps,
            first=self._start_index(steps),
            timesteps_kwargs=self._native_timesteps,
            level_of=self._native_level,
            to_output=self._native_output,
        )

    def _native_timesteps(self, steps: int) -> dict[str, Any]:
        """``set_timesteps`` arguments as the pipeline passes them."""
        return {"num_inference_steps": steps, "device": self.device}

    def _native_level(self, scheduler: Any, i: int) -> float:
        """The level of step ``i`` of a scheduler (``len(timesteps)``: the end)."""
        raise NotImplementedError

    def _native_output(self, x: torch.Tensor, x0: torch.Tensor, level: float) -> torch.Tensor:
        """The network output a scheduler expects, from the model input ``x`` and ``x0_hat``."""
        raise NotImplementedError

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, *latent_shape)`` to images ``(B, 3, H, W)`` in [0, 1], in VAE batches."""
        import torch

        vae = self.pipe.vae
        images = []
        if getattr(self, "_decode_rows", None) is None:  # fixed for the run: replay decodes alike
            self._decode_rows = self.decode_batch_size()
        for chunk in x0.split(self._decode_rows):
            latents = self._vae_input(chunk.to(self.device))  # (b, C, h, w), the VAE's scale
            image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]  # (b, 3, H, W) in [-1, 1]
            images.append((image / 2 + 0.5).clamp(0, 1).float())  # the pipelines' postprocess
        return torch.cat(images) if images else x0.new_zeros((0, 3, 1, 1))

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        """Model latents to the VAE's: ``latents / scaling_factor`` (SD, SD-XL, PixArt)."""
        return latents / self.pipe.vae.config.scaling_factor

    # -- img2img --------------------------------------------------------------------------------
    def _image_latents(self, encoded: torch.Tensor) -> torch.Tensor:
        """The VAE's posterior mean to model latents as the img2img pipeline scales it (the
        inverse of ``_vae_input``): ``scaling_factor * z`` (SD)."""
        return encoded * self.pipe.vae.config.scaling_factor

    def _from_start(self, levels: list[float], steps: int) -> list[float]:
        """A grid of ``steps`` steps from where the run starts (img2img: the noised image's level)."""
        if getattr(self, "_init_latents", None) is None:
            return levels
        return levels[self._start_index(steps):]

    def _start_index(self, steps: int) -> int:
        """The grid index a run of ``steps`` steps starts at: 0, or img2img's ``t_start``."""
        if getattr(self, "_init_latents", None) is None:
            return 0
        return img2img.start_index(steps, self.strength, flow=self.img2img_flow_rounding)

    def initial_state(self, noise: torch.Tensor, level: float) -> torch.Tensor:
        """The state at the grid's first level from initial noises ``(B, *latent_shape)``: the noise
        itself, or with an init image that image's latents noised to ``level`` (``add_noise``)."""
        if getattr(self, "_init_latents", None) is None:
            return noise
        a, b = self.schedule.scales(level)
        return a * self._init_latents.to(noise.device, noise.dtype) + b * noise

    # -- the pipeline's own call from a noise (best_noise.safetensors' "latents") ------------------
    #: Whether the family's pipeline passes its ``generator`` to ``scheduler.step``, so that a
    #: stochastic scheduler's step noise can be given to it (``noisesearch.api.pipeline_latents_info``).
    pipeline_step_generator: ClassVar[bool] = True
    #: How ``pipeline_latents`` relates to the pipeline's ``latents=`` (said in the saved file).
    latents_scaling: ClassVar[str] = (
        "unscaled N(0, I) noise, shape (1, C, h, w); the pipeline multiplies it by its scheduler's "
        "init_noise_sigma itself")

    def pipeline_latents(self, noise: torch.Tensor) -> torch.Tensor | None:
        """Initial noises ``(B, *latent_shape)`` as this family's pipeline takes ``latents=``
        (``latents_scaling`` says how); None where the pipeline takes none."""
        return noise.float().contiguous()  # (B, C, h, w)

    def pipeline_call(self, solver: str, steps: int) -> dict[str, Any]:
        """What ``pipe(prompt, latents=..., **kwargs)`` needs besides the latents to give the run's
        image: ``scheduler`` (a diffusers class name; None where no diffusers scheduler runs the
        solver: the core's heun), ``scheduler_options`` over the pipeline's configuration, and
        ``kwargs``."""
        if solver == "native":
            scheduler: str | None = self._native_class.__name__
            options = dict(self.scheduler_options)
        else:
            scheduler = self._core_solver_scheduler() if solver == "ddim" else None
            options = {}
        kwargs: dict[str, Any] = {"num_inference_steps": int(steps), "guidance_scale": self.guidance_scale,
                                  "height": self.height, "width": self.width}
        if self.guidance_rescale > 0.0:
            kwargs["guidance_rescale"] = self.guidance_rescale
        if self.clip_skip is not None:
            kwargs["clip_skip"] = self.clip_skip
        call: dict[str, Any] = {"scheduler": scheduler, "scheduler_options": options, "kwargs": kwargs}
        if getattr(self, "_init_latents", None) is not None:
            call["why_not"] = (
                f"img2img: the pipeline's latents= does not start from the init image; with a "
                f"deterministic scheduler, run the family's img2img pipeline with image= the image's "
                f"latents, strength={self.strength} and generator=torch.Generator().manual_seed(seed) "
                f"for a candidate of seed seed (docs/models.md); with a stochastic one (its step noise "
                f"would come from that generator too) or any other: replay the recipe (noisesearch "
                f"replay RUN)")
        return call

    def _core_solver_scheduler(self) -> str:
        """The diffusers scheduler that the core's ``ddim`` solver equals on this family."""
        return "DDIMScheduler"  # eta 0, configured from the pipeline's scheduler

    # -- memory ----------------------------------------------------------------------------------
    @property
    def static_batch(self) -> bool:
        """Whether every denoiser batch must have the run's batch size (a compiled network: one
        graph per shape); the engine then pads the last, smaller batch (``noisesearch.units``)."""
        return getattr(self, "compile_mode", None) is not None

    @property
    def compile_info(self) -> dict[str, Any] | None:
        """What run.json records of ``compile`` (None: not compiled)."""
        return compiled.describe(getattr(self, "compile_mode", None), getattr(self, "compile_backend", ""))

    @property
    def preferred_batch_size(self) -> int:
        """Candidates per batch: from free memory (the accelerator's; on a CPU the host's
        available memory) and the latent size; recorded in the run's configuration, so that
        replay and resume batch alike.

        Bound = ``MEMORY_FRACTION`` x free memory / (``ACTIVATION_FACTOR`` x tokens x width x
        element size x guidance branches), floored to a power of two and capped at
        ``MAX_BATCH_SIZE``. A deliberate over-estimate of activations: a batch that still does
        not fit is halved by the engine on an out-of-memory error.
        """
        free = self._free_memory()
        if free is None:
            return self.cpu_batch_size
        if self.cpu_offload:  # the denoiser is not resident yet; it will be while running
            free -= _parameter_bytes(self._denoiser())
        tokens, width = self._activation_size()
        branches = 2 if self._guided() else 1
        per_candidate = ACTIVATION_FACTOR * tokens * width * _itemsize(self.weights_dtype) * branches
        return _floor_power_of_two(min(MAX_BATCH_SIZE, max(1, int(free * MEMORY_FRACTION // per_candidate))))

    def decode_batch_size(self) -> int:
        """Images per VAE decode: the decoder at full resolution dominates memory (GBs at 1024 px)."""
        free = self._free_memory()
        if free is None:
            return self.cpu_batch_size
        vae = self.pipe.vae
        pixels = self.height * self.width
        per_image = DECODER_FACTOR * pixels * vae.config.block_out_channels[0] * _itemsize(vae.dtype)
        return max(1, int(free * MEMORY_FRACTION // per_image))

    def _free_memory(self) -> int | None:
        """Free bytes on a CUDA device, counting blocks cached by PyTorch's allocator as free;
        on a CPU, the host's available memory (None where it cannot be read)."""
        import torch

        if self.device.type == "cpu":
            return memory.host_available()
        if self.device.type != "cuda" or not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free + cached)

    def _denoiser(self) -> torch.nn.Module:
        return self.pipe.unet if hasattr(self.pipe, "unet") else self.pipe.transformer

    def _activation_size(self) -> tuple[int, int]:
        """(tokens, channels) of the widest activation of one forward, for the memory policy."""
        raise NotImplementedError

    def _guided(self) -> bool:
        return self.guidance_scale > 1.0

    def _batched(self, cond: torch.Tensor, uncond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """A conditioning tensor for ``batch`` rows, preceded by the unconditional rows when
        guided: ``[uncond, cond]``, the pipelines' order, for one batched forward."""
        import torch

        rows = cond.expand(batch, *cond.shape[1:])
        if not self._guided():
            return rows
        return torch.cat([uncond.expand(batch, *uncond.shape[1:]), rows])

    def _guide(self, output: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance on the output of a ``[uncond, cond]`` batch."""
        if not self._guided():
            return output
        uncond, cond = output.chunk(2)
        guided = uncond + self.guidance_scale * (cond - uncond)
        if self.guidance_rescale > 0.0:  # the pipelines' rescale_noise_cfg
            guided = guidance.rescale(guided, cond, self.guidance_rescale)
        return guided


class VariancePreservingModel(DiffusersModel):
    """Adapters of DDPM-trained networks (SD 1/2, SD-XL, PixArt, DiT): eps-, v- or x-prediction."""

    discrete_timesteps: ClassVar[bool] = True

    def _setup_schedule(self) -> None:
        scheduler = self.pipe.scheduler
        self.schedule: VariancePreserving = VariancePreserving(tuple(scheduler.alphas_cumprod.tolist()))
        config = scheduler.config
        self.prediction_type = config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise IncompatibleError(
                f"prediction_type {self.prediction_type!r} of {self.path!r} is not supported "
                f"(epsilon, v_prediction or sample)"
            )
        # DDIM clips x0_hat when the scheduler says so; doing it here keeps the solver exact.
        self.clip_sample = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample") else None

    def levels(self, steps: int) -> list[float]:
        """The grid of diffusers' DDIM for this pipeline's scheduler configuration.

        ``(t + 1) / T`` for each DDIM timestep ``t``, then the final level: 0 when the
        configuration sets ``set_alpha_to_one`` (DDIM's last step goes to abar = 1), else ``1 / T``
        (abar = alphas_cumprod[0]); a final level equal to the last step's is dropped (that DDIM
        step would not move). E.g. SD's "leading" spacing at 4 steps: t = 751, 501, 251, 1 and
        levels 0.752, 0.502, 0.252, 0.002, 0.001.

        Each step goes to the next listed timestep. Diffusers' ``DDIMScheduler.step`` goes from
        ``t`` to ``t - T // steps`` whatever the spacing: the same for "leading" spacing and for
        "trailing" when ``steps`` divides ``T``, so there the two agree to float rounding. Under
        "linspace" (PixArt's configuration) diffusers lands between listed timesteps and then
        evaluates the network at the next listed one as if it were there; we keep the sample on
        the grid the network is evaluated at. The images differ (about 3/255 on PixArt-Sigma);
        ``tests/test_baseline.py`` pins both cases.
        """
        from diffusers import DDIMScheduler

        ddim = scheduler_like(DDIMScheduler, self.pipe.scheduler.config)
        bound = max_steps(dict(ddim.config))  # planning refuses more steps; a backstop here
        if bound is not None and steps > bound:
            raise ConfigError("steps", f"must be at most {bound} for this pipeline ({_STEPS_BOUND}), "
                              f"got {steps}")
        try:
            ddim.set_timesteps(steps)
        except ValueError as exc:
            raise ConfigError("steps", f"{steps} steps cannot run on this pipeline: {exc}") from None
        total = self.schedule.train_steps
        if int(ddim.timesteps.max()) >= total:  # an unusual steps_offset (>= 2) at fewer steps
            raise ConfigError("steps", f"{steps} steps start this pipeline's grid at timestep "
                              f"{int(ddim.timesteps.max())} (steps_offset {ddim.config.steps_offset}), "
                              f"beyond the network's {total} training timesteps; choose another number")
        levels = [(float(t) + 1.0) / total for t in ddim.timesteps.tolist()]
        final = 0.0 if ddim.config.set_alpha_to_one else 1.0 / total
        if final < levels[-1]:
            levels.append(final)
        return self._from_start(levels, steps)  # img2img: from the noised image's level

    def native_solver(self, steps: int) -> native.NativeSolver:
        if self.clip_sample is not None:
            raise IncompatibleError(f"the scheduler of {self.path!r} clips x0 (clip_sample), which "
                                    f"--solver native cannot reproduce; use ddim or heun")
        return super().native_solver(steps)

    def _native_level(self, scheduler: Any, i: int) -> float:
        """``(t + 1) / T`` for step ``i``'s timestep ``t``; 0 at the end."""
        if i >= len(scheduler.timesteps):
            return 0.0
        return (float(scheduler.timesteps[i]) + 1.0) / self.schedule.train_steps

    def _native_output(self, x: torch.Tensor, x0: torch.Tensor, level: float) -> torch.Tensor:
        a, b = self.schedule.scales(level)
        if self.prediction_type == "epsilon":
            return (x - a * x0) / b
        if self.prediction_type == "v_prediction":
            return (a * x - x0) / b
        return x0

    def _timestep(self, sigma: float) -> float:
        """Diffusers' timestep ``sigma * T - 1``, snapped to the integer it is meant to be."""
        t = self.schedule.timestep(sigma)
        return float(round(t)) if abs(t - round(t)) < _TIMESTEP_SNAP else t

    def _x0(self, x: torch.Tensor, output: torch.Tensor, sigma: float) -> torch.Tensor:
        """The clean prediction from the network's (guided) output, as DDIM computes it."""
        a, b = self.schedule.scales(sigma)
        if self.prediction_type == "epsilon":
            x0 = (x - b * output) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x - b * output
        else:
            x0 = output
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        return x0


def transformer_patch(path: str) -> int:
    """The transformer's ``patch_size`` from its config.json (1 where it cannot be read)."""
    config = index.read_json(path, "transformer/config.json", required=False) or {}
    patch = config.get("patch_size")
    return patch if isinstance(patch, int) and patch > 0 else 1


def _loading_error(path: str, exc: BaseException, kwargs: dict[str, Any]) -> str:
    """One paragraph for a pipeline that ``from_pretrained`` could not load."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    hint = ""
    if "safetensors" in str(exc) and kwargs.get("use_safetensors"):
        hint = (" Only safetensors weights are loaded by default; if you trust this pipeline's "
                "pickled (.bin) weights, pass --model-opt use_safetensors=false.")
    elif kwargs.get("variant") and "variant" in str(exc):
        hint = f" Leave out --model-opt variant={kwargs['variant']} to load the default weights."
    elif not index.is_local(path):
        hint = (" For a hub id the files must be downloadable now, or all in the local cache "
                "(HF_HUB_OFFLINE=1 then uses only the cache).")
    return f"cannot load the pipeline {path!r}: {type(exc).__name__}: {first}.{hint}"


#: Why ``max_steps`` bounds the steps (the same words as planning's refusal).
_STEPS_BOUND = "its scheduler's grid must stay within the network's training timesteps"


def max_steps(config: Any) -> int | None:
    """The most steps a DDPM-trained pipeline's scheduler configuration can run: its
    ``num_train_timesteps`` T (diffusers refuses more), less where "leading" spacing plus
    ``steps_offset`` would start the grid at timestep T or beyond, outside training (SD's offset
    1 at T steps: timestep 1000, level 1.001, where diffusers' own DDIM step fails); None where
    the configuration does not say.

    DDIM's "leading" grid starts at ``(steps - 1) * (T // steps) + steps_offset``; "trailing" and
    "linspace" start at T - 1 whatever the offset."""
    total = config.get("num_train_timesteps")
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        return None
    if config.get("timestep_spacing", "leading") != "leading":
        return total
    offset = config.get("steps_offset") or 0
    if not isinstance(offset, int) or isinstance(offset, bool) or offset <= 0:
        return total
    for steps in range(total, 0, -1):
        if (steps - 1) * (total // steps) + offset < total:
            return steps
    return None


def scheduler_like(scheduler_class: type, config: Any) -> Any:
    """A ``scheduler_class`` with the settings of another scheduler's ``config`` that it shares
    (betas, spacing, offsets, shifts), the rest at its defaults; unlike ``from_config`` it does not
    warn about the other scheduler's own settings."""
    accepted = inspect.signature(scheduler_class.__init__).parameters
    return scheduler_class(**{k: v for k, v in dict(config).items() if k in accepted})


def _dtype_keyword() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` since diffusers deprecated ``torch_dtype``."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:  # older diffusers: only torch_dtype
        return "torch_dtype"
    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _itemsize(dtype: torch.dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _floor_power_of_two(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)
