"""Diffusers pipelines as noisesearch models: one adapter per family, the ``hf`` dispatcher and
named presets (registered by :mod:`noisesearch_builtin.models.diffusers.plugin`).

Families: Stable Diffusion 1.x/2.x, SD-XL, SD3, FLUX.1, PixArt-Sigma, DiT. Nothing here imports
torch or diffusers at import time; weights load when a model is built. See ``docs/models.md``.
"""
