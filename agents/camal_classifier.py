"""Supervised CAMAL: an image classifier trained with cross-entropy plus the Grad-CAM alignment loss.

    python vision/doom_objects.py --out data/doom_objects --images-per-class 500 --seed 1
    python agents/camal_classifier.py --data data/doom_objects --model resnet_mini                  # CAMAL
    python agents/camal_classifier.py --data data/doom_objects --model resnet_mini --attn-loss none  # vanilla
    tensorboard --logdir runs

The classifier (vision/models.py) is trained on the data folder's ``train`` split (docs/vision.md: the folder
format); after every epoch it is scored on every other split (``val``, and e.g. ``test_balanced`` and
``test_shifted``). The CAMAL block (marked below) adds lambda * mean(beta - alpha) of the differentiable
Grad-CAM of the true class, the same loss as the RL agent's (agents/attention.py, docs/method.md s.3-4);
``--attn-loss rrr`` and ``entropy`` and the control ``--mask-source`` values are those of agents/ppo_camal.py.
Inference is the classifier's plain forward pass: the loss changes the weights, not the model.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents import run_folder
from agents.attention import (attention_loss, grad_cam, has_target, project_masks, relevance_mass,
                              training_masks)
from agents.attention_logging import attention_images
from agents.checks import check_finite_and_seed, check_positive, check_writable_dir
from agents.methods import method_label
from agents.run_folder import CHECKPOINT, load_classifier_checkpoint, save_classifier_checkpoint
from agents.signals import Interrupted, NonFiniteLoss, StopRequested
from vision import models
from vision.folder import FolderError, ImageMaskFolder, splits_of

# lambda of each attention loss when --camal-coef is not given (docs/vision.md: choice of lambda)
DEFAULT_CLASSIFIER_COEF = {"none": 0.0, "camal": 1.0, "rrr": 1.0, "entropy": 1.0}
TRAIN_SPLIT = "train"
VAL_SPLIT = "val"


@dataclass
class Args:
    data: str = "data/doom_objects"
    """the data folder (docs/vision.md: images/, masks/, splits/); vision/doom_objects.py writes one"""
    model: str = "resnet_mini"
    """classifier: torchvision's resnet50, vit_b_16, swin_t, maxvit_t, convnext_tiny, efficientnet_b0, or a reduced
    configuration of the same classes for CPU budgets (resnet_mini, vit_mini, ...; vision/models.py)"""
    image_size: int = 64
    """images and masks are resized to this square size (the models' grids at it: vision/models.py)"""
    weights: str | None = None
    """initial weights: a local state dict file, or a torchvision weights name of a standard model (e.g.
    DEFAULT; downloaded on first use); None: random init"""
    epochs: int = 10
    """passes over the train split"""
    batch_size: int = 64
    """images per minibatch"""
    learning_rate: float | None = None
    """Adam's learning rate; default per family as the paper: 1e-4 for ViT, Swin and MaxViT, 1e-3 for the CNNs"""
    attn_loss: Literal["none", "camal", "rrr", "entropy"] = "camal"
    """attention loss: none (vanilla), camal, rrr (Right for the Right Reasons) or entropy (the generic
    regulariser: minimise the map's entropy, no mask)"""
    camal_coef: float | None = None
    """lambda: weight of the attention loss; default 1 for each loss (docs/vision.md: choice of lambda)"""
    mask_source: Literal["labels", "random", "shuffled", "uniform"] = "labels"
    """masks the attention loss sees: labels (the data's), random (same-area blobs), shuffled (another image's)
    or uniform (the whole image)"""
    bf16: bool = False
    """run the network in bfloat16 (torch.autocast; the losses and the attention terms stay fp32)"""
    seed: int = 1
    """seed of the initialisation, the order of the images and the control masks"""
    cuda: bool = True
    """use CUDA when it is available"""
    exp_name: str = ""
    """name of the experiment in the run folder's name (default: the method, e.g. camal, vanilla)"""
    runs_dir: str = "runs"
    """folder that holds the run folders"""
    resume: str | None = None
    """continue the run in this run folder; flags given with it must not change the run, except --epochs
    (train longer), --cuda and the logging flags --test-every and --image-every"""
    image_every: int = 1
    """log val images with the attention map and the mask outline every this many epochs (0: never)"""
    test_every: int = 1
    """score the held-out splits other than val (accuracy and relevance mass in curves.csv) every this many
    epochs and at the last (0: at the last only); val is scored every epoch. Scoring does not change training,
    and the evaluation proper is eval/classifier.py's"""

    # filled in at runtime
    method: tyro.conf.Suppress[str] = ""
    """(set at runtime) method label used by eval/aggregate.py"""
    classes: tyro.conf.Suppress[list[str]] = field(default_factory=list)
    """(set at runtime) the data folder's classes, in label order"""
    grid: tyro.conf.Suppress[list[int]] = field(default_factory=list)
    """(set at runtime) (h, w) of the Grad-CAM layer at --image-size"""


RESUME_CHANGEABLE = ("epochs", "cuda", "test_every", "image_every")


def check_args(args: Args, data_needed: bool = True) -> None:
    """Raise ValueError (one line: what was wrong, what is valid) for bad arguments (``data_needed=False``: all
    but the data folder, which a study checks when it starts)."""
    check_finite_and_seed(args)
    check_positive(args, ("image_size", "epochs", "batch_size"))
    if args.learning_rate is not None and args.learning_rate <= 0:
        raise ValueError(f"--learning-rate must be > 0 (or omitted: the family's default), got {args.learning_rate}")
    if args.camal_coef is not None and args.camal_coef < 0:
        raise ValueError(f"--camal-coef must be >= 0, got {args.camal_coef}")
    if args.image_every < 0:
        raise ValueError(f"--image-every must be >= 0, got {args.image_every}")
    if args.test_every < 0:
        raise ValueError(f"--test-every must be >= 0, got {args.test_every}")
    models.check_name(args.model)
    models.check_image_size(args.model, args.image_size)
    if args.weights is not None:
        models.resolve_weights(args.model, args.weights)
    if data_needed and TRAIN_SPLIT not in splits_of(args.data):
        raise ValueError(f"--data {args.data}: no {TRAIN_SPLIT} split (splits/{TRAIN_SPLIT}.txt); "
                         f"it has {', '.join(splits_of(args.data))}")
    if not args.resume:
        check_writable_dir(Path(args.runs_dir), "--runs-dir")


def set_runtime_fields(args: Args) -> None:
    if args.learning_rate is None:
        args.learning_rate = models.default_learning_rate(args.model)
    if args.camal_coef is None:
        args.camal_coef = DEFAULT_CLASSIFIER_COEF[args.attn_loss]
    args.method = method_label(args.attn_loss, args.mask_source)
    args.exp_name = args.exp_name or args.method


def load_splits(args: Args) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every split of the data folder in memory, train first: (images uint8, masks bool, labels)."""
    names = [TRAIN_SPLIT] + [name for name in splits_of(args.data) if name != TRAIN_SPLIT]
    splits = {}
    for name in names:
        folder = ImageMaskFolder(args.data, name, args.image_size)
        if args.classes and list(folder.classes) != list(args.classes):
            raise ValueError(f"--data {args.data}: classes {folder.classes} are not the run's {list(args.classes)}")
        args.classes = list(folder.classes)
        splits[name] = folder.tensors()
    return splits


def main(args: Args) -> Path:
    """Train; bad arguments exit with a one-line error before anything is written.

    Exits 128 + signal after Ctrl-C / SIGTERM (with a checkpoint) and 1 on a non-finite loss."""
    checkpoint = None
    try:
        if args.resume:
            args = run_folder.merge_resume(args, Args, RESUME_CHANGEABLE)
            checkpoint = load_classifier_checkpoint(args.resume)
        check_args(args)
        set_runtime_fields(args)
        splits = load_splits(args)
        torch.manual_seed(args.seed)
        classifier = models.create(args.model, len(args.classes), args.image_size, args.weights)
        args.grid = list(classifier.grid)
    except (ValueError, FolderError) as error:
        sys.exit(f"error: {error}")
    if checkpoint is not None and checkpoint["epoch"] == args.epochs:
        print(f"run {args.resume} is finished ({args.epochs} epochs); nothing to do (--epochs trains it longer)")
        return Path(args.resume)
    if checkpoint is not None and checkpoint["epoch"] > args.epochs:
        sys.exit(f"error: --epochs {args.epochs}: the run has already trained {checkpoint['epoch']} epochs")

    if args.resume:
        run_dir = Path(args.resume)
        run_folder.write_config(run_dir, args)  # --epochs may have changed
    else:
        try:
            run_dir = run_folder.create_run_dir(args, args.model)
        except OSError as error:
            sys.exit(f"error: --runs-dir {args.runs_dir}: cannot create a run folder there ({error.strerror})")
    try:
        signum = train(args, run_dir, classifier, splits, checkpoint)
    except NonFiniteLoss as error:
        kept = f"{run_dir / CHECKPOINT} holds the last finite weights" if (run_dir / CHECKPOINT).exists() \
            else "no checkpoint had been written"
        sys.exit(f"error: {error}; training stopped before an optimizer step with it, so {kept}")
    except Interrupted as interrupted:
        signum = interrupted.signum
        tqdm.write(f"stopped at once by signal {signum}; {run_dir / CHECKPOINT} is the last one saved", file=sys.stderr)
    if signum is not None:
        tqdm.write(f"interrupted; continue with --resume {run_dir}", file=sys.stderr)
        sys.exit(128 + signum)
    return run_dir


def train(args: Args, run_dir: Path, classifier: models.Classifier, splits: dict, checkpoint: dict | None) -> int | None:
    """Train from the start or from ``checkpoint``; returns the signal that stopped it, if one did."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    classifier = classifier.to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=args.learning_rate)
    mask_generator = torch.Generator().manual_seed(args.seed)
    epoch, batch_start, images_seen, purge_step = 0, 0, 0, None
    if checkpoint is not None:
        classifier.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        mask_generator.set_state(checkpoint["rng"]["masks"])
        epoch, batch_start, images_seen = checkpoint["epoch"], checkpoint["batch"], checkpoint["images_seen"]
        purge_step = images_seen + 1
    writer = SummaryWriter(str(run_dir), purge_step=purge_step)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    curves = run_folder.read_curves(run_dir)[:epoch]
    precision = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=args.bf16)
    # ViT's fused attention kernel has no double backward, which the Grad-CAM losses take
    attention_kernel = models.attention_math_kernel if args.attn_loss != "none" else contextlib.nullcontext
    images, masks, labels = splits[TRAIN_SPLIT]
    batches = -(-len(labels) // args.batch_size)
    stop = StopRequested()
    progress = tqdm(total=args.epochs * batches, initial=epoch * batches + batch_start, unit="batch",
                    desc=run_dir.name, dynamic_ncols=True, mininterval=2)
    try:
        while epoch < args.epochs:
            classifier.train()
            # the epoch's order depends on the seed and the epoch only, so a resumed epoch continues it
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
            sums = {"loss": 0.0, "cross_entropy": 0.0, "attention_loss": 0.0, "correct": 0, "images": 0}
            start_time = time.time()
            for batch in range(batch_start, batches):
                index = order[batch * args.batch_size:(batch + 1) * args.batch_size]
                x = (images[index].to(device).float() / 255.0).requires_grad_(args.attn_loss == "rrr")
                y, mb_masks = labels[index].to(device), masks[index].to(device)
                with attention_kernel(), precision():
                    features, logits = classifier.features_and_logits(x)
                logits = logits.float()
                cross_entropy = F.cross_entropy(logits, y)
                loss = cross_entropy
                terms = {"cross_entropy": cross_entropy}

                # ---------------- CAMAL: attention loss on this minibatch ----------------
                if args.attn_loss != "none":
                    loss_masks = training_masks(mb_masks, args.mask_source, mask_generator)
                    with attention_kernel():
                        if args.attn_loss == "camal":  # the map at the layer's grid, masks projected onto it
                            cams = grad_cam(features.float(), logits, y, None)
                            attn_loss = attention_loss("camal", project_masks(loss_masks, classifier.grid), cams=cams)
                        elif args.attn_loss == "entropy":
                            maps = grad_cam(features.float(), logits, y, mb_masks.shape[-2:])
                            attn_loss = attention_loss("entropy", loss_masks, maps=maps)
                        else:
                            log_probs = F.log_softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
                            attn_loss = attention_loss("rrr", loss_masks, inputs=x, log_probs=log_probs)
                    loss = loss + args.camal_coef * attn_loss
                    terms["attention_loss"] = attn_loss
                    sums["attention_loss"] += attn_loss.item() * len(y)
                # ---------------------------------------------------------------------------

                if not torch.isfinite(loss):
                    raise NonFiniteLoss(epoch * batches + batch, {**terms, "loss": loss})
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                images_seen += len(y)
                sums["loss"] += loss.item() * len(y)
                sums["cross_entropy"] += cross_entropy.item() * len(y)
                sums["correct"] += int((logits.argmax(dim=1) == y).sum())
                sums["images"] += len(y)
                writer.add_scalar("losses/loss", loss.item(), images_seen)
                writer.add_scalar("losses/cross_entropy", cross_entropy.item(), images_seen)
                if args.attn_loss != "none":
                    writer.add_scalar(f"losses/{args.attn_loss}_loss", attn_loss.item(), images_seen)
                progress.update(1)
                if stop.signum is not None:
                    save_classifier_checkpoint(run_dir / CHECKPOINT, classifier, optimizer, epoch, batch + 1,
                                               images_seen, len(args.classes), mask_generator)
                    return stop.signum

            seconds = time.time() - start_time
            row = {"epoch": epoch + 1, "images_seen": images_seen,
                   "train_images_per_s": sums["images"] / seconds if sums["images"] else float("nan")}
            for name in ("loss", "cross_entropy", "attention_loss"):
                measured = sums["images"] and (name != "attention_loss" or args.attn_loss != "none")
                row[f"train_{name}"] = sums[name] / sums["images"] if measured else float("nan")
            row["train_accuracy"] = sums["correct"] / sums["images"] if sums["images"] else float("nan")
            classifier.eval()
            score_tests = epoch + 1 == args.epochs or (args.test_every and (epoch + 1) % args.test_every == 0)
            for name, split in splits.items():
                if name == VAL_SPLIT or (name != TRAIN_SPLIT and score_tests):
                    show = args.image_every and (epoch + 1) % args.image_every == 0 and name == VAL_SPLIT
                    row |= score_split(classifier, split, name, device, precision, writer, images_seen, show)
            for key, value in row.items():
                if key not in ("epoch", "images_seen"):
                    writer.add_scalar(f"epoch/{key}", value, images_seen)
            curves.append(row)
            epoch, batch_start = epoch + 1, 0
            run_folder.write_curves(run_dir, curves)
            save_classifier_checkpoint(run_dir / CHECKPOINT, classifier, optimizer, epoch, 0, images_seen,
                                       len(args.classes), mask_generator)
            progress.set_postfix(val=f"{row.get('val_accuracy', float('nan')):.3f}")
    finally:
        progress.close()
        writer.close()
    tqdm.write(f"run folder: {run_dir}")
    return None


def score_split(classifier, split, name: str, device, precision, writer, step: int, show: bool,
                batch_size: int = 256) -> dict[str, float]:
    """Accuracy and relevance mass (Grad-CAM of the predicted class, on images with a mask) on one split."""
    images, masks, labels = split
    correct, masses, shown = 0, [], None
    for start in range(0, len(labels), batch_size):
        x = images[start:start + batch_size].to(device).float() / 255.0
        mask = masks[start:start + batch_size].to(device)
        with torch.enable_grad(), precision():
            features, logits = classifier.features_and_logits(x)
        predicted = logits.argmax(dim=1)
        maps = grad_cam(features.float(), logits.float(), predicted, mask.shape[-2:], create_graph=False).detach()
        correct += int((predicted.cpu() == labels[start:start + batch_size]).sum())
        with_target = has_target(mask)
        masses.append(relevance_mass(maps[with_target], mask[with_target]))
        if show and shown is None:
            shown = attention_images((x[:8] * 255).mean(dim=1, keepdim=True), maps[:8], mask[:8])
    if shown is not None:
        writer.add_images(f"attention/{name}", shown, step)
    mass = torch.cat(masses)
    return {f"{name}_accuracy": correct / len(labels),
            f"{name}_relevance_mass": torch.nanmean(mass).item() if len(mass) else float("nan")}


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line; with --resume, flags not given take the run's saved values (so a given one is a change)."""
    args = tyro.cli(Args, args=argv)
    if args.resume:
        try:
            saved = run_folder.resume_args(args.resume, Args)
        except ValueError as error:
            sys.exit(f"error: {error}")
        args = tyro.cli(Args, args=argv, default=saved)
    return args


if __name__ == "__main__":
    main(parse_args())
