"""Evaluate a trained classifier (agents/camal_classifier.py): accuracy, alignment and faithfulness per split.

    python eval/classifier.py runs/resnet_mini__camal__1__1700000000

On every split of the run's data folder but train (e.g. val: in distribution; test_balanced: every class on
every background; test_shifted: backgrounds replaced by noise), with the Grad-CAM map of the predicted class:
accuracy; on the images with a mask, relevance mass, relevance rank and the pointing game with their chance
levels (eval/metrics.py), deletion / insertion AUCs of the predicted class's probability with the map's pixel
order and with a random order, the drop of that probability when the object's pixels are occluded against a
random region of equal area; and images/s of the plain forward pass (the inference cost, the same for every
method). Writes classifier_eval.json into the run folder (or --out); docs/vision.md describes its keys.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import tyro
from tqdm import tqdm

from agents import run_folder
from agents.attention import grad_cam, has_target, random_blob_masks
from agents.checks import check_writable_dir
from agents.run_folder import ALIGNMENT, CHECKPOINT, CLASSIFIER_EVAL
from eval.metrics import (chance_levels, deletion_insertion, occlusion_drop, pointing_game, relevance_mass,
                          relevance_rank, zero_maps)
from vision import models
from vision.folder import FolderError, ImageMaskFolder, splits_of

TRAIN_SPLIT = "train"


@dataclass
class Args:
    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """the classifier's run folder (config.json and checkpoint.pt)"""
    data: str | None = None
    """the data folder to evaluate on (None: the run's own --data)"""
    splits: list[str] | None = None
    """splits to evaluate (None: every split but train)"""
    images: int | None = None
    """evaluate the first this many images of each split (None: all)"""
    deletion_steps: int = 20
    """points of the deletion / insertion curves (fractions 0, 1/n, ..., 1)"""
    batch_size: int = 128
    """images per forward pass"""
    seed: int = 0
    """seed of the random pixel order, the random occlusion regions and the ties of the map order"""
    cuda: bool = True
    """use CUDA when it is available"""
    out: str | None = None
    """folder to write classifier_eval.json to (None: the run folder)"""


class EvalError(ValueError):
    """Bad input to the evaluation: one line, what was wrong and what is valid."""


def load_classifier(run_dir: Path, device: torch.device) -> tuple[models.Classifier, dict]:
    try:
        config = run_folder.read_config(run_dir)
        state = run_folder.load_classifier_checkpoint(run_dir)
    except ValueError as error:
        raise EvalError(str(error)) from None
    if "model" not in config or "classes" not in config:
        raise EvalError(f"{run_dir}: not a run of agents/camal_classifier.py (its config has no model and classes)")
    classifier = models.create(config["model"], len(config["classes"]), config["image_size"])
    classifier.load_state_dict(state["model"])
    return classifier.to(device).eval(), config


def evaluate_split(classifier, images, masks, labels, args: Args, device) -> dict[str, float]:
    """The metrics of one split (means over its images; alignment over images with a mask and a non-zero map, and
    ``images_zero_map`` counts the images with a mask whose map is all zero, which alignment leaves out)."""
    generator = torch.Generator(device=device).manual_seed(args.seed)
    probability = lambda x: torch.softmax(classifier(x).float(), dim=1)  # noqa: E731
    scores: dict[str, list[torch.Tensor]] = {}
    correct, zero_map, forward_seconds = 0, 0, 0.0
    for start in tqdm(range(0, len(labels), args.batch_size), desc="batches", leave=False):
        x = images[start:start + args.batch_size].to(device).float() / 255.0
        mask = masks[start:start + args.batch_size].to(device)
        tic = time.perf_counter()
        with torch.no_grad():
            classifier(x)
        forward_seconds += time.perf_counter() - tic
        with torch.enable_grad():
            features, logits = classifier.features_and_logits(x)
            predicted = logits.argmax(dim=1)
            maps = grad_cam(features.float(), logits.float(), predicted, mask.shape[-2:], create_graph=False).detach()
        correct += int((predicted.cpu() == labels[start:start + args.batch_size]).sum())
        keep = has_target(mask)
        if not keep.any():
            continue
        x, mask, maps, predicted = x[keep], mask[keep], maps[keep], predicted[keep]
        zero = zero_maps(maps)
        zero_map += int(zero.sum())
        chance = chance_levels(mask)
        batch_scores = {
            "relevance_mass": relevance_mass(maps, mask), "relevance_mass_chance": chance["mass"],
            "relevance_rank": relevance_rank(maps, mask, generator=generator), "relevance_rank_chance": chance["rank"],
            "pointing_game": pointing_game(maps, mask), "pointing_game_chance": chance["pointing"],
        }
        for name in ALIGNMENT:  # an all-zero map looks nowhere: no alignment score, as eval/attention.py
            for key in (name, f"{name}_chance"):
                batch_scores[key] = torch.where(zero, torch.nan, batch_scores[key].float())
        by_map = deletion_insertion(probability, x, maps, predicted, args.deletion_steps, "map", generator)
        by_chance = deletion_insertion(probability, x, maps, predicted, args.deletion_steps, "random", generator)
        batch_scores |= {"deletion_auc": by_map.deletion_auc, "deletion_auc_random": by_chance.deletion_auc,
                         "insertion_auc": by_map.insertion_auc, "insertion_auc_random": by_chance.insertion_auc,
                         "occlusion_drop": occlusion_drop(probability, x, mask, predicted),
                         "occlusion_drop_random": occlusion_drop(probability, x, random_blob_masks(mask, generator),
                                                                 predicted)}
        for key, value in batch_scores.items():
            scores.setdefault(key, []).append(value.float().cpu())
    means = {key: torch.nanmean(torch.cat(values)).item() for key, values in scores.items()}
    return {"images": len(labels), "images_with_mask": int(sum(len(v) for v in scores.get("deletion_auc", []))),
            "images_zero_map": zero_map, "accuracy": correct / len(labels),
            "images_per_s": len(labels) / forward_seconds, **means}


def run(args: Args) -> dict:
    if args.deletion_steps < 1 or args.batch_size < 1 or (args.images is not None and args.images < 1):
        raise EvalError("--deletion-steps, --batch-size and --images must be >= 1")
    run_dir = Path(args.run)
    if not (run_dir / CHECKPOINT).is_file():
        raise EvalError(f"{run_dir}: no {CHECKPOINT} (is it a run folder of agents/camal_classifier.py?)")
    out_dir = Path(args.out) if args.out else run_dir
    try:
        check_writable_dir(out_dir, "--out" if args.out else "run folder")
    except ValueError as error:
        raise EvalError(str(error)) from None
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    classifier, config = load_classifier(run_dir, device)
    data = args.data or config["data"]
    try:
        available = splits_of(data)
        names = args.splits or [name for name in available if name != TRAIN_SPLIT]
        unknown = [name for name in names if name not in available]
        if unknown:
            raise EvalError(f"--splits {', '.join(unknown)}: not in {data}; valid: {', '.join(available)}")
        results = {}
        for name in names:
            folder = ImageMaskFolder(data, name, config["image_size"])
            if list(folder.classes) != list(config["classes"]):
                raise EvalError(f"{data}: classes {folder.classes} are not the run's {config['classes']}")
            images, masks, labels = folder.tensors()
            if args.images is not None:
                images, masks, labels = images[:args.images], masks[:args.images], labels[:args.images]
            results[name] = evaluate_split(classifier, images, masks, labels, args, device)
    except FolderError as error:
        raise EvalError(str(error)) from None
    result = {"run": str(run_dir), "model": config["model"], "method": config["method"], "seed": config["seed"],
              "data": str(data), "image_size": config["image_size"], "deletion_steps": args.deletion_steps,
              "eval_seed": args.seed, "splits": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CLASSIFIER_EVAL).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {out_dir / CLASSIFIER_EVAL}")
    return result


def print_table(result: dict) -> None:
    names = list(result["splits"])
    keys = ["accuracy", "relevance_mass", "relevance_mass_chance", "pointing_game", "deletion_auc",
            "deletion_auc_random", "insertion_auc", "insertion_auc_random", "occlusion_drop", "occlusion_drop_random",
            "images_per_s", "images_with_mask", "images_zero_map"]
    print(f"{result['model']} {result['method']} seed {result['seed']}")
    print(f"{'metric':<24}" + "".join(f"{name:>16}" for name in names))
    for key in keys:
        print(f"{key:<24}" + "".join(f"{result['splits'][name].get(key, float('nan')):>16.4g}" for name in names))


def main(args: Args) -> dict:
    """Evaluate; input problems exit with one line `error: ...` on stderr and status 1."""
    try:
        return run(args)
    except EvalError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main(tyro.cli(Args))
