"""Training speed of the supervised paradigm's classifiers (vision/models.py) with and without the CAMAL loss.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/classifier_speed.py --image-size 64 --threads 1

For each model (the reduced configurations by default; ``--models`` to choose): training images/s of a step
(forward, cross-entropy, backward, AdamW) on a fixed random batch, without and with the CAMAL term
(``grad_cam`` of the labels' logits with ``create_graph=True``, upsampled to the image, ``camal_loss`` on a fixed
mask, added to the cross-entropy), and scoring images/s (eval mode: the forward pass and the Grad-CAM of the
predicted class, no graph, as agents/camal_classifier.py scores a held-out split after each epoch), the three
interleaved step by step so that drift on a shared machine hits them alike, medians over ``--steps``; and the
CAMAL term's relative cost. ViT's CAMAL steps run under
``attention_math_kernel()`` (its fused CPU attention has no double backward), its plain steps do not, as a
trainer would. ``--bf16``: both under ``torch.autocast("cpu", torch.bfloat16)`` (fast where the CPU has AMX).

``OMP_WAIT_POLICY=PASSIVE`` matters where other processes share the cores: OpenMP's spinning threads
otherwise steal time from each other (5-25x measured on this project's machine with training runs beside).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import tyro

from agents.attention import camal_loss, grad_cam
from vision import models


@dataclass
class Args:
    models: list[str] = field(default_factory=lambda: list(models.REDUCED_MODELS))
    """models to time (vision.models.MODELS)"""
    image_size: int = 64
    """side of the square RGB input"""
    batch_size: int = 64
    """images per training step"""
    steps: int = 5
    """timed steps of each setup (after one warm-up step each)"""
    threads: int = 1
    """torch intra-op threads"""
    bf16: bool = False
    """run the steps under bfloat16 autocast"""
    num_classes: int = 8
    """classes of the classifier"""
    seed: int = 1
    """seed of the weights and the batch"""


def check_args(args: Args) -> None:
    for name in args.models:
        models.check_name(name)
        models.check_image_size(name, args.image_size)
    for flag, value in (("batch-size", args.batch_size), ("steps", args.steps), ("threads", args.threads)):
        if value < 1:
            raise ValueError(f"--{flag} must be >= 1, got {value}")


def training_step(classifier, optimiser, images, labels, masks, camal: bool, bf16: bool) -> None:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with models.attention_math_kernel(enabled=camal), autocast:
        if camal:
            features, logits = classifier.features_and_logits(images)
            maps = grad_cam(features, logits, labels, images.shape[2:], create_graph=True)
            loss = F.cross_entropy(logits.float(), labels) + camal_loss(maps.float(), masks)
        else:
            loss = F.cross_entropy(classifier(images).float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
    optimiser.step()


def scoring_step(classifier, images, bf16: bool) -> None:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    classifier.eval()
    with autocast:
        features, logits = classifier.features_and_logits(images)
        grad_cam(features.float(), logits.float(), logits.argmax(dim=1), images.shape[2:], create_graph=False)
    classifier.train()


def images_per_second(name: str, args: Args) -> tuple[float, float, float, tuple[int, int]]:
    """(without CAMAL, with CAMAL) training images/s and scoring images/s of ``name`` (medians of interleaved
    steps), and its grid."""
    torch.manual_seed(args.seed)
    classifier = models.create(name, args.num_classes, args.image_size).train()
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=models.default_learning_rate(name))
    generator = torch.Generator().manual_seed(args.seed)
    size = args.image_size
    images = torch.rand(args.batch_size, 3, size, size, generator=generator)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator)
    masks = torch.zeros(args.batch_size, size, size)
    masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    seconds = {"plain": [], "camal": [], "scoring": []}
    for repeat in range(args.steps + 1):
        for setup in list(seconds) if repeat % 2 == 0 else list(seconds)[::-1]:
            start = time.perf_counter()
            if setup == "scoring":
                scoring_step(classifier, images, args.bf16)
            else:
                training_step(classifier, optimiser, images, labels, masks, setup == "camal", args.bf16)
            if repeat > 0:  # the first step of each is the warm-up
                seconds[setup].append(time.perf_counter() - start)
    plain, camal, scoring = (args.batch_size / statistics.median(seconds[setup]) for setup in seconds)
    return plain, camal, scoring, classifier.grid


def main(args: Args) -> None:
    try:
        check_args(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    torch.set_num_threads(args.threads)
    print(f"image size {args.image_size}, batch {args.batch_size}, {args.threads} thread(s), "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, median of {args.steps} steps")  # fmt: skip
    print(f"{'model':<18} {'family':<12} {'grid':>6} {'CE img/s':>9} {'CE+CAMAL img/s':>15} {'CAMAL cost':>11} "
          f"{'scoring img/s':>14}")
    for name in args.models:
        plain, camal, scoring, grid = images_per_second(name, args)
        grid = "x".join(map(str, grid))
        family = models.FAMILIES[models.ARCHITECTURES[name]]
        print(f"{name:<18} {family:<12} {grid:>6} {plain:>9.1f} {camal:>15.1f} {plain / camal - 1:>+10.1%} "
              f"{scoring:>14.1f}", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
