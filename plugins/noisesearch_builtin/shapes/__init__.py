"""The embedded `shapes` world: coloured shapes with exact ground truth.

``world`` draws scenes, ``grammar`` writes and parses their captions (GenEval's six
categories) and holds the held-out prompt suite (``prompts.txt``), ``judge`` reads a scene
back from an image. All three are numpy only.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
PROMPTS_FILE = PACKAGE_DIR / "prompts.txt"
#: The shipped diffusers ``StableDiffusionPipeline`` folder (the model ``shapes``).
PIPELINE_DIR = PACKAGE_DIR / "pipeline"
#: The shipped transformers ``CLIPModel`` folder (the verifier ``shapes-clip``).
CLIP_DIR = PACKAGE_DIR / "clip"
