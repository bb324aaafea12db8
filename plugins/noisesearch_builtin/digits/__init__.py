"""The embedded default: a small flow-matching model of scikit-learn's 8x8 digits, plus two
independently trained classifiers (one to search with, one to judge with).

Weights live in ``weights/`` and are produced by ``python -m noisesearch_builtin.digits.train``.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
FLOW_WEIGHTS = WEIGHTS_DIR / "digits_flow.safetensors"
CLASSIFIER_WEIGHTS = WEIGHTS_DIR / "digits_classifier.safetensors"
EVALUATOR_WEIGHTS = WEIGHTS_DIR / "digits_evaluator.safetensors"
#: The bench's prompt suite for the digits model: every label (``noisesearch bench``).
SUITE_FILE = Path(__file__).parent / "suite.txt"

NUM_CLASSES = 10
IMAGE_SIZE = 8
#: scikit-learn's digits take integer values 0..16; the model works in [-1, 1].
PIXEL_MAX = 16.0
