"""Train the embedded digits model and its two classifiers; measure best-of-N search.

Run ``python -m noisesearch_builtin.digits.train [--out DIR] [--seed 0]``.

Weights: ``digits_flow.safetensors`` (flow model), ``digits_classifier.safetensors``
(``DigitsMLPClassifier``, the search verifier) and ``digits_evaluator.safetensors``
(``DigitsConvClassifier``, the independent judge). The 1797 digits are split by a seeded
permutation into two disjoint halves; the verifier learns half A only and the evaluator half
B only, so search cannot succeed merely by exploiting the judge's own mistakes.

Flow budget: 200 Adam steps of batch 128 (about 14 epochs, under a second on one core),
sigma ~ U(0, 1), 10% of labels dropped to the null label for classifier-free guidance. The
model is kept weak on purpose: the built-in demo must show search helping, so one sample
(20 Euler steps from pure noise, no guidance) should often be the wrong digit. On one seed
each, 100 / 150 / 200 / 250 / 300 steps gave single-sample evaluator agreement of about
0.29 / 0.38 / 0.47 / 0.59 / 0.68; 200 sits mid-way in the 30-60% target and leaves headroom
above best-of-16 for smarter strategies.

Measured on a 2-core AMD EPYC VM (torch 2.14.1 CPU, one thread, scikit-learn 1.9.1), with
the command ``python -m noisesearch_builtin.digits.train --seed 0`` (10 labels x 100 trials,
fixed noise seeds; best-of-N keeps the candidate with the highest MLP-verifier log-softmax of
the requested label, and the conv evaluator judges it)::

    held-out accuracy   verifier (MLP, trained on A, tested on B)   0.952
                        evaluator (conv, trained on B, tested on A) 0.973
    evaluator agreement N=1 0.479   N=4 0.684   N=16 0.831   N=64 0.885
    time                training 9 s (flow 0.7 s), measurement 11 s, ~22 s in all

Classifier augmentation: random shifts of up to one pixel (background fill) and Gaussian
pixel noise of std 0.15, clamped to [-1, 1]; samples are clamped to [-1, 1] before judging.

Determinism: training runs with ``torch.set_num_threads(1)`` (restored afterwards), a seeded
``torch.manual_seed`` and a seeded numpy permutation, so a rerun with the same seed, torch
version and CPU gives byte-identical files (header keys are sorted after saving). Other CPUs
or torch versions may pick other kernels and give slightly different weights.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from noisesearch.sampling import RectifiedFlow, draw_noise, solve
from noisesearch_builtin.digits import (
    CLASSIFIER_WEIGHTS,
    EVALUATOR_WEIGHTS,
    FLOW_WEIGHTS,
    IMAGE_SIZE,
    NUM_CLASSES,
    PIXEL_MAX,
    WEIGHTS_DIR,
)
from noisesearch_builtin.digits.networks import (
    PIXELS,
    DigitsConvClassifier,
    DigitsFlowNet,
    DigitsMLPClassifier,
)

# Flow model: deliberately under-trained (see the module docstring for why this number).
FLOW_STEPS = 200
FLOW_BATCH = 128
FLOW_LR = 1e-3
LABEL_DROPOUT = 0.1  # fraction of training labels replaced by the null label NUM_CLASSES
FLOW_CONFIG: dict[str, int] = {"hidden": 256, "depth": 3, "embed_dim": 64}

# Classifiers: trained to convergence on their half of the data.
CLASSIFIER_EPOCHS = 60
CLASSIFIER_BATCH = 64
CLASSIFIER_LR = 2e-3
AUGMENT_NOISE_STD = 0.15  # Gaussian pixel noise added to training images (range [-1, 1])
MLP_CONFIG: dict[str, int] = {"hidden": 128}
CONV_CONFIG: dict[str, int] = {"channels": 32}

# Measurement of best-of-N search.
SAMPLE_STEPS = 20
EVAL_SAMPLES_PER_LABEL = 100
BEST_OF: tuple[int, ...] = (1, 4, 16, 64)
EVAL_SEED_OFFSET = 1_000_000  # keeps measurement noise seeds away from small user seeds


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as images (1797, 1, 8, 8) in [-1, 1] and labels (1797,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / (PIXEL_MAX / 2) - 1.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    return images.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE), labels


def split_halves(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint index halves A and B from a seeded permutation of ``range(count)``."""
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[: count // 2]), np.sort(order[count // 2 :])


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (background fill) plus Gaussian pixel noise.

    Model samples are off-centre and grainy more often than scanned digits; this keeps the
    classifiers from being confidently wrong on them. images: (B, 1, 8, 8).
    """
    batch = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)  # (B, 1, 10, 10)
    dy, dx = torch.randint(0, 3, (2, batch), generator=generator)
    rows = dy[:, None] + torch.arange(IMAGE_SIZE)[None, :]  # (B, 8)
    cols = dx[:, None] + torch.arange(IMAGE_SIZE)[None, :]  # (B, 8)
    shifted = padded[torch.arange(batch)[:, None, None], 0, rows[:, :, None], cols[:, None, :]]
    noise = AUGMENT_NOISE_STD * torch.randn(shifted.shape, generator=generator)
    return (shifted + noise).clamp(-1.0, 1.0).unsqueeze(1)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on images (B, 1, 8, 8)."""
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    generator: torch.Generator,
) -> nn.Module:
    """Cross-entropy training with Adam and augmentation; returns ``model`` in eval mode."""
    optimiser = torch.optim.Adam(model.parameters(), lr=CLASSIFIER_LR, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), CLASSIFIER_BATCH):
            batch = order[start : start + CLASSIFIER_BATCH]
            loss = F.cross_entropy(model(augment(images[batch], generator)), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def train_flow(
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    log: Callable[[str], None] = print,
) -> DigitsFlowNet:
    """Rectified-flow matching: regress ``v = eps - x0`` at ``x_s = (1 - s) x0 + s eps``.

    ``s ~ U(0, 1)`` (uniform: every level matters equally for a 20-step Euler sampler);
    ``LABEL_DROPOUT`` of labels become the null label so the same net is unconditional too.
    images: (N, 64) flattened, labels: (N,).
    """
    net = DigitsFlowNet(**FLOW_CONFIG)
    optimiser = torch.optim.Adam(net.parameters(), lr=FLOW_LR)
    net.train()
    for step in range(steps):
        batch = torch.randint(0, len(images), (FLOW_BATCH,), generator=generator)
        x0 = images[batch]  # (B, 64)
        cond = labels[batch].clone()
        cond[torch.rand(FLOW_BATCH, generator=generator) < LABEL_DROPOUT] = NUM_CLASSES
        sigma = torch.rand(FLOW_BATCH, generator=generator)  # (B,)
        eps = torch.randn(x0.shape, generator=generator)
        x = (1.0 - sigma[:, None]) * x0 + sigma[:, None] * eps
        loss = F.mse_loss(net(x, sigma, cond), eps - x0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if (step + 1) % max(steps // 5, 1) == 0 or step + 1 == steps:
            log(f"  flow step {step + 1}/{steps}  loss {loss.item():.4f}")
    return net.eval()


def sample_flow(
    net: DigitsFlowNet, labels: torch.Tensor, noise: torch.Tensor, steps: int = SAMPLE_STEPS
) -> torch.Tensor:
    """DDIM (= Euler for a rectified flow) from pure noise at level 1, no guidance.

    labels: (B,), noise: (B, 64) -> images (B, 1, 8, 8) clamped to [-1, 1] as decoding would.
    """
    schedule = RectifiedFlow()

    def denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
        level = torch.full((x.shape[0],), sigma)
        return x - sigma * net(x, level, labels)  # x0_hat, (B, 64)

    with torch.no_grad():
        x = solve(denoiser, noise, schedule, schedule.levels(steps), solver="ddim").x
    return x.clamp(-1.0, 1.0).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


def measure_best_of(
    flow: DigitsFlowNet,
    verifier: nn.Module,
    evaluator: nn.Module,
    samples_per_label: int,
    best_of: Sequence[int] = BEST_OF,
    seed: int = 0,
) -> dict[str, float]:
    """Evaluator agreement with the requested label after best-of-N by the verifier.

    For each label and each of ``samples_per_label`` trials, ``max(best_of)`` candidates are
    drawn from fixed noise seeds; best-of-N keeps the first N of them (nested, so the N
    columns are comparable) and picks the one with the highest verifier log-softmax of the
    requested label. The evaluator then judges the pick.
    """
    width = max(best_of)
    hits = {n: 0 for n in best_of}
    for label in range(NUM_CLASSES):
        first = EVAL_SEED_OFFSET + seed * 10_000_000 + label * samples_per_label * width
        noise = draw_noise(range(first, first + samples_per_label * width), (PIXELS,))
        wanted = torch.full((len(noise),), label)
        with torch.no_grad():
            images = sample_flow(flow, wanted, noise)  # (T*W, 1, 8, 8)
            score = verifier(images).log_softmax(1)[:, label].view(samples_per_label, width)
            judged = (evaluator(images).argmax(1) == label).view(samples_per_label, width)
        for n in best_of:
            pick = score[:, :n].argmax(1)  # (T,)
            hits[n] += int(judged[torch.arange(samples_per_label), pick].sum())
    total = NUM_CLASSES * samples_per_label
    return {f"evaluator_agreement_n{n}": hits[n] / total for n in best_of}


def _metadata(config: dict[str, int], **fields: object) -> dict[str, str]:
    return {"config": json.dumps(config), **{k: str(v) for k, v in fields.items()}}


def _save(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """``save_file``, then sort the header's keys in place so reruns are byte-identical.

    safetensors writes metadata in hash-map order, which changes from run to run; the
    rewritten header has the same length (padded with spaces, as the format allows) so tensor
    offsets are untouched.
    """
    save_file(model.state_dict(), str(path), metadata=metadata)
    with path.open("r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canonical) <= length:
            handle.seek(8)
            handle.write(canonical.ljust(length, b" "))


def train_all(
    out_dir: Path,
    seed: int = 0,
    flow_steps: int | None = None,
    classifier_epochs: int | None = None,
    samples_per_label: int = EVAL_SAMPLES_PER_LABEL,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train all three networks, write them to ``out_dir`` and return the metrics.

    ``flow_steps`` / ``classifier_epochs`` / ``samples_per_label`` default to the real budget;
    pass small values for a smoke test (e.g. ``flow_steps=20, classifier_epochs=1,
    samples_per_label=2``).
    """
    flow_steps = FLOW_STEPS if flow_steps is None else flow_steps
    classifier_epochs = CLASSIFIER_EPOCHS if classifier_epochs is None else classifier_epochs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_all(out_dir, seed, flow_steps, classifier_epochs, samples_per_label, log)
    finally:
        torch.set_num_threads(threads)


def _train_all(
    out_dir: Path,
    seed: int,
    flow_steps: int,
    classifier_epochs: int,
    samples_per_label: int,
    log: Callable[[str], None],
) -> dict[str, float]:
    started = time.perf_counter()
    torch.manual_seed(seed)
    images, labels = load_data()  # (1797, 1, 8, 8), (1797,)
    half_a, half_b = split_halves(len(images), seed)
    a, b = torch.from_numpy(half_a), torch.from_numpy(half_b)
    split = (
        f"sklearn load_digits, {len(images)} images, numpy default_rng({seed}).permutation: "
        f"half A = first {len(a)}, half B = last {len(b)}"
    )
    metrics: dict[str, float] = {}

    log(f"verifier (MLP) on half A ({len(a)} images), {classifier_epochs} epochs")
    generator = torch.Generator().manual_seed(seed)
    verifier = train_classifier(
        DigitsMLPClassifier(**MLP_CONFIG), images[a], labels[a], classifier_epochs, generator
    )
    metrics["verifier_heldout_accuracy"] = accuracy(verifier, images[b], labels[b])
    log(f"  held-out accuracy on half B: {metrics['verifier_heldout_accuracy']:.4f}")

    log(f"evaluator (conv) on half B ({len(b)} images), {classifier_epochs} epochs")
    generator = torch.Generator().manual_seed(seed + 1)
    evaluator = train_classifier(
        DigitsConvClassifier(**CONV_CONFIG), images[b], labels[b], classifier_epochs, generator
    )
    metrics["evaluator_heldout_accuracy"] = accuracy(evaluator, images[a], labels[a])
    log(f"  held-out accuracy on half A: {metrics['evaluator_heldout_accuracy']:.4f}")

    log(f"flow on all {len(images)} images, {flow_steps} steps of batch {FLOW_BATCH}")
    generator = torch.Generator().manual_seed(seed + 2)
    flow_started = time.perf_counter()
    flow = train_flow(images.flatten(1), labels, flow_steps, generator, log)
    metrics["flow_train_seconds"] = time.perf_counter() - flow_started
    metrics["train_seconds"] = time.perf_counter() - started

    augmentation = f"random 1-pixel shifts, N(0, {AUGMENT_NOISE_STD}^2) pixel noise"
    common = {"seed": seed, "data_split": split, "pixels": "x / 8 - 1 in [-1, 1]"}
    _save(
        flow,
        out_dir / FLOW_WEIGHTS.name,
        metadata=_metadata(
            FLOW_CONFIG,
            **common,
            architecture="DigitsFlowNet",
            training_steps=flow_steps,
            batch_size=FLOW_BATCH,
            objective="rectified flow, v = eps - x0, sigma ~ U(0, 1)",
            label_dropout=LABEL_DROPOUT,
            trained_on="all digits",
        ),
    )
    for model, path, config, half, heldout, name in (
        (verifier, CLASSIFIER_WEIGHTS, MLP_CONFIG, "A", "verifier", "DigitsMLPClassifier"),
        (evaluator, EVALUATOR_WEIGHTS, CONV_CONFIG, "B", "evaluator", "DigitsConvClassifier"),
    ):
        _save(
            model,
            out_dir / path.name,
            metadata=_metadata(
                config,
                **common,
                architecture=name,
                training_epochs=classifier_epochs,
                augmentation=augmentation,
                trained_on=f"half {half}",
                heldout_accuracy=f"{metrics[f'{heldout}_heldout_accuracy']:.4f}",
            ),
        )
    log(f"saved weights to {out_dir}")

    log(f"best-of-N over {NUM_CLASSES} labels x {samples_per_label} trials, {SAMPLE_STEPS} steps")
    measure_started = time.perf_counter()
    metrics.update(measure_best_of(flow, verifier, evaluator, samples_per_label, seed=seed))
    metrics["measure_seconds"] = time.perf_counter() - measure_started
    for n in BEST_OF:
        log(f"  N={n:<3d} evaluator agreement {metrics[f'evaluator_agreement_n{n}']:.3f}")
    log(f"train {metrics['train_seconds']:.1f} s, measure {metrics['measure_seconds']:.1f} s")
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flow-steps", type=int, default=None, help=f"default {FLOW_STEPS}")
    parser.add_argument(
        "--classifier-epochs", type=int, default=None, help=f"default {CLASSIFIER_EPOCHS}"
    )
    parser.add_argument("--samples-per-label", type=int, default=EVAL_SAMPLES_PER_LABEL)
    args = parser.parse_args(argv)
    metrics = train_all(
        args.out, args.seed, args.flow_steps, args.classifier_epochs, args.samples_per_label
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
