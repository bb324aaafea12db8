"""Tiny diffusers pipelines with random weights, built offline from configs, for tests.

Each builder returns a pipeline of the real class (``StableDiffusionPipeline``, ``FluxPipeline``,
...) whose components are scaled down to a few hundred thousand parameters, so that the adapters
can be tested through their real loading path: ``pipeline.save_pretrained(folder)`` and then the
``hf`` model with ``path=folder``. Weights come from ``torch.manual_seed(0)`` so every build of a
family is the same pipeline.

Tokenizers are real tokenizers built without the hub: CLIP's byte-level BPE from the vocabulary file
that open_clip ships (its first ``CLIP_MERGES`` merges, to keep tokenizer files small and quick to
load), and a T5-style unigram tokenizer built in memory. Schedulers: DDIM for the
variance-preserving families (so the core's ``ddim`` solver must match the pipeline exactly),
flow-matching Euler for SD3 and FLUX, configured like the released checkpoints (SD's
``scaled_linear`` betas with ``steps_offset=1``, FLUX's dynamic shifting, SD3's ``shift=3``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from noisesearch import hookimpl
from noisesearch_builtin.shapes.networks import bytes_to_unicode, clip_bpe_merges

#: Families a tiny pipeline can be built for (``build(family)``).
FAMILIES = ("sd", "sd-v", "sdxl", "sd3", "flux", "flux-schnell", "pixart-sigma", "dit")
#: How many of CLIP's 48,894 BPE merges the tiny tokenizer keeps.
CLIP_MERGES = 3000
#: Image side of every tiny pipeline, in pixels (latents are 8x8 with the 2x VAE below).
IMAGE_SIZE = 16

_T5_WORDS = [
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "photograph", "painting", "picture",
    "drawing", "cat", "dog", "red", "blue", "green", "apple", "wooden", "table", "squirrel", "eating",
    "burger", "golden", "retriever", "cute", "small", "big", "tree", "house", "car", "sky",
]


@lru_cache(maxsize=2)
def _clip_vocab_and_merges(merges_kept: int = CLIP_MERGES) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary over its first ``merges_kept`` merges (the embedded shapes model's BPE
    reader, so that one piece of code reads open_clip's file)."""
    merges = list(clip_bpe_merges()[:merges_kept])
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer(full: bool = False) -> Any:
    """CLIP's tokenizer, ``model_max_length`` 77 as in SD: the first ``CLIP_MERGES`` merges, or with
    ``full`` all 48,894 (the real 49,408-token tokenizer, ids as open_clip's)."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges(48894 if full else CLIP_MERGES)
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def t5_tokenizer() -> Any:
    """A T5-style unigram tokenizer (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) over a small vocabulary."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -5.0)]
    pieces += [("\u2581" + word, -1.0 - i / 100) for i, word in enumerate(_T5_WORDS)]
    pieces += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'-"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip_text_config(hidden: int = 32, projection: int = 32) -> Any:
    from transformers import CLIPTextConfig

    vocab, _ = _clip_vocab_and_merges()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act="gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def _t5_encoder(d_model: int = 32) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(t5_tokenizer()),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int = 4, scaling_factor: float = 0.18215, shift_factor: float | None = None) -> Any:
    """A 2x-downsampling KL autoencoder (two blocks), like SD's 8x VAE in miniature."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def _ddim(prediction_type: str = "epsilon", **config: Any) -> Any:
    from diffusers import DDIMScheduler

    defaults = dict(  # Stable Diffusion's released scheduler configuration
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return DDIMScheduler(**{**defaults, **config, "prediction_type": prediction_type})


def _unet(**config: Any) -> Any:
    from diffusers import UNet2DConditionModel

    defaults = dict(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    return UNet2DConditionModel(**{**defaults, **config})


def build_sd(prediction_type: str = "epsilon") -> Any:
    """Stable Diffusion 1.x/2.x: UNet, CLIP text encoder, VAE, DDIM (``prediction_type`` eps or v)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_text_config()),
        tokenizer=clip_tokenizer(),
        unet=_unet(),
        scheduler=_ddim(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl() -> Any:
    """SDXL: two CLIP encoders (the second with projection), added time ids and pooled embeds."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = _unet(
        cross_attention_dim=64,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids + pooled projection
        use_linear_projection=True,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025),
        text_encoder=CLIPTextModel(_clip_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config()),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=_ddim(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_sd3() -> Any:
    """SD3: MMDiT, two CLIP encoders with projection and a T5 encoder, flow matching (shift 3)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,  # T5's width; the two CLIPs (16 + 16) are padded to it
        caption_projection_dim=32,
        pooled_projection_dim=32,  # the two CLIP projections, 16 + 16
        pos_embed_max_size=16,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=CLIPTextModelWithProjection(_clip_text_config(hidden=16, projection=16)),
        tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(hidden=16, projection=16)),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_encoder(32),
        tokenizer_3=t5_tokenizer(),
    )


def build_flux(guidance_embeds: bool = True) -> Any:
    """FLUX.1: packed 2x2 latents, CLIP pooled + T5 embeddings, dynamic shift ``mu``.

    ``guidance_embeds=True`` is a FLUX.1-dev-like guidance-distilled model (guidance is an
    input); ``False`` a FLUX.1-schnell-like timestep-distilled one.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1's released configuration
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=CLIPTextModel(_clip_text_config()),
        tokenizer=clip_tokenizer(),
        text_encoder_2=_t5_encoder(32),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )


def build_pixart_sigma() -> Any:
    """PixArt-Sigma: DiT with T5 cross-attention and a learned-sigma output, DDIM."""
    import torch
    from diffusers import PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=IMAGE_SIZE // 2,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,  # learned sigma: eps and variance channels
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtSigmaPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=_t5_encoder(32),
        vae=_vae(),
        transformer=transformer,
        scheduler=_ddim(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, steps_offset=0),
    )


def build_dit() -> Any:
    """DiT: class-conditional (1000 classes + null class 1000), learned sigma, DDIM as released."""
    import torch
    from diffusers import DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=IMAGE_SIZE // 2,
        patch_size=2,
        num_embeds_ada_norm=1000,
    )
    scheduler = _ddim(
        beta_schedule="linear", beta_start=0.0001, beta_end=0.02, steps_offset=0, set_alpha_to_one=True
    )
    return DiTPipeline(transformer=transformer, vae=_vae(), scheduler=scheduler)


def build(family: str) -> Any:
    """The tiny pipeline of ``family`` (one of :data:`FAMILIES`)."""
    builders = {
        "sd": lambda: build_sd("epsilon"),
        "sd-v": lambda: build_sd("v_prediction"),
        "sdxl": build_sdxl,
        "sd3": build_sd3,
        "flux": lambda: build_flux(guidance_embeds=True),
        "flux-schnell": lambda: build_flux(guidance_embeds=False),
        "pixart-sigma": build_pixart_sigma,
        "dit": build_dit,
    }
    pipeline = builders[family]()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def save(family: str, folder: Path) -> Path:
    """Build the tiny pipeline of ``family`` and ``save_pretrained`` it to ``folder``."""
    build(family).save_pretrained(folder)
    return folder


@contextmanager
def plain_cpu_kernels() -> Iterator[None]:
    """Without oneDNN (mkldnn) kernels, restoring the setting afterwards.

    On these CPUs oneDNN re-creates its convolution primitives for tiny inputs again and again
    (about 2 s per UNet call instead of 20 ms). Both sides of every comparison run under the same
    setting, so equivalence is unaffected.
    """
    import torch

    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


class TinyFolders:
    """``folders(family)``: the folder of that family's tiny pipeline, saved once under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[str, Path] = {}

    def __call__(self, family: str) -> Path:
        if family not in self._folders:
            self._folders[family] = save(family, self.root / family)
        return self._folders[family]


class _BrightnessPlugin:
    """A test-only verifier that needs nothing (mean brightness), so text and label models alike
    can be searched without downloading a real verifier."""

    @hookimpl
    def register_verifiers(self, register: Any) -> None:
        from noisesearch.testing import BrightnessVerifier

        register("test-brightness", BrightnessVerifier)


def registries_with_brightness() -> Any:
    """The built-in registries (no entry points) plus the ``test-brightness`` verifier."""
    from noisesearch.plugins import build_registries, get_plugin_manager

    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(_BrightnessPlugin(), name="test-brightness")
    return build_registries(pm)
