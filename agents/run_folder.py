"""The run folder: the one owner of its format. agents/ppo_camal.py writes it; eval/ and experiments/ read it.

A run folder ``runs/ENV__EXP_NAME__SEED__TIME/`` holds:
    config.json           the run's arguments (agents/ppo_camal.py's Args, resolved)
    checkpoint.pt         weights, optimizer, RNG states, step counts (written atomically)
    attention_eval.json   eval/attention.py's result (alignment, faithfulness, occlusion)
    shift_eval.json       eval/shift.py's result (the background-shift test)
    returns.csv           eval/record.py's episodic returns (step, return), exported from tensorboard
A classifier run (agents/camal_classifier.py) has config.json and checkpoint.pt too, and:
    curves.csv            one row per epoch: losses, accuracies, relevance mass, images/s
    classifier_eval.json  eval/classifier.py's result
    events.out.tfevents.* tensorboard
Writing and reading config.json and checkpoint.pt is done here, for every trainer and tool.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import time
import typing
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tyro

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
ATTENTION_EVAL = "attention_eval.json"
SHIFT_EVAL = "shift_eval.json"
RETURNS = "returns.csv"
CURVES = "curves.csv"
CLASSIFIER_EVAL = "classifier_eval.json"
ALIGNMENT = ("relevance_mass", "relevance_rank", "pointing_game")
"""the evaluation files' metrics that are NaN on a frame whose map is all zero (here, so that readers of records
need not import torch)"""

# torch is imported by the functions that read or write a checkpoint, so that the tools that read only a
# run's records (eval/aggregate.py) start without it


# ---------------------------------------------------------------- config.json


def create_run_dir(args, prefix: str) -> Path:
    """A new run folder ``args.runs_dir/PREFIX__EXP_NAME__SEED__TIME`` holding config.json; a launch in the
    same second gets a suffix."""
    name = f"{prefix}__{args.exp_name}__{args.seed}__{int(time.time())}"
    for attempt in itertools.count(1):
        run_dir = Path(args.runs_dir) / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            continue
        write_config(run_dir, args)
        return run_dir


def write_config(run_dir: Path, args) -> None:
    """config.json: the run's arguments (a dataclass), resolved; without ``resume``, which the folder itself is."""
    (run_dir / CONFIG).write_text(json.dumps(dataclasses.asdict(dataclasses.replace(args, resume=None)), indent=2))


def read_config(run_dir: str | Path) -> dict:
    """config.json of a run folder; ValueError (one line) if it is missing or not JSON."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {CONFIG} (is it a run folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def load_config(run_dir: str | Path, config_class):
    """The saved arguments of a run to resume, as ``config_class`` (keys it no longer has are left out)."""
    if not (Path(run_dir) / CONFIG).is_file() or not (Path(run_dir) / CHECKPOINT).is_file():
        raise ValueError(f"--resume {run_dir}: not a run folder (needs {CONFIG} and {CHECKPOINT})")
    try:
        saved = read_config(run_dir)
    except ValueError as error:
        raise ValueError(f"--resume {error}") from None
    known = {field.name for field in dataclasses.fields(config_class)}
    return config_class(**{key: value for key, value in saved.items() if key in known})


def resume_args(run_dir: str | Path, config_class):
    """The saved arguments of a run, with ``resume`` set: flags given on top of them are changes."""
    return dataclasses.replace(load_config(run_dir, config_class), resume=str(run_dir))


def runtime_fields(config_class) -> set[str]:
    """The fields a trainer sets itself (``tyro.conf.Suppress``: no flag gives them)."""
    hints = typing.get_type_hints(config_class, include_extras=True)
    return {name for name, hint in hints.items() if tyro.conf.Suppress in typing.get_args(hint)[1:]}


def merge_resume(args, config_class, changeable: tuple[str, ...]):
    """The saved run's arguments with the changes that --resume allows (the fields ``changeable``); any
    other change is refused."""
    saved = load_config(args.resume, config_class)
    ignored = runtime_fields(config_class) | set(changeable) | {"resume"}
    changed = [field.name for field in dataclasses.fields(config_class)
               if field.name not in ignored and getattr(args, field.name) != getattr(saved, field.name)]
    if changed:
        flag = {name: "--" + name.replace("_", "-") for name in [*changed, *changeable]}
        described = ", ".join(f"{flag[n]} ({getattr(saved, n)!r} -> {getattr(args, n)!r})" for n in changed)
        raise ValueError(f"--resume {args.resume} continues the run as it was configured; it cannot change "
                         f"{described}; only {', '.join(flag[n] for n in changeable)} may be given")
    return dataclasses.replace(saved, resume=args.resume, **{name: getattr(args, name) for name in changeable})


# ---------------------------------------------------------------- checkpoint.pt


def save_state(path: Path, state: dict) -> None:
    """Atomic: written to a temporary file, then renamed over the old checkpoint."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, keys: tuple[str, ...], map_location="cpu") -> dict:
    """A checkpoint that holds ``keys``; ValueError (one line) for a damaged file or another kind of file."""
    import torch

    try:  # the checkpoints hold RNG states (numpy arrays), so they need the full unpickler
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several unrelated types for a damaged file
        raise ValueError(f"{path}: not a readable checkpoint, truncated or damaged ({type(error).__name__})") from None
    missing = set(keys) - set(state) if isinstance(state, dict) else set(keys)
    if missing:
        raise ValueError(f"{path}: not a checkpoint of this trainer (missing {', '.join(sorted(missing))})")
    return state


def checkpoint_step(run_dir: Path) -> int:
    """The environment steps a run of agents/ppo_camal.py had trained at its last checkpoint."""
    return int(load_state(run_dir / CHECKPOINT, ("global_step",))["global_step"])


PPO_CHECKPOINT_KEYS = ("model", "optimizer", "iteration", "global_step", "num_actions", "rng")


def save_checkpoint(path: Path, agent, optimizer, iteration: int, global_step: int) -> None:
    """agents/ppo_camal.py's checkpoint: weights, optimizer, updates and steps done, and every RNG state."""
    import torch

    save_state(path, {
        "model": agent.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "global_step": global_step,
        "num_actions": agent.actor.out_features,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    })


def load_checkpoint(args) -> dict:
    """The checkpoint of the run being resumed (agents/ppo_camal.py), checked against its config."""
    path = Path(args.resume) / CHECKPOINT
    state = load_state(path, PPO_CHECKPOINT_KEYS)
    if state["global_step"] != state["iteration"] * args.batch_size:
        raise ValueError(f"{path}: {state['global_step']} steps in {state['iteration']} updates do not match "
                         f"{CONFIG}'s batch (num_envs x num_steps = {args.batch_size}); the checkpoint is another run's")
    if state["iteration"] > args.num_iterations:
        raise ValueError(f"--total-timesteps {args.total_timesteps}: the run has already trained "
                         f"{state['global_step']} steps; give at least that many")
    return state


class CheckpointMismatch(ValueError):
    """The checkpoint of a resumed run does not fit its environment."""


class StartPoint(NamedTuple):
    iteration: int  # updates already done
    global_step: int
    reset_seed: int  # seed of the first envs.reset
    mask_seed: int  # seed of the generator of control masks (--mask-source random / shuffled)
    purge_step: int | None  # tensorboard drops the events an interrupted run logged from this step on


def start_point(args, checkpoint: dict | None, agent, optimizer) -> StartPoint:
    """Where training starts: at 0, or where ``checkpoint`` left off, with its weights and RNG states."""
    import torch

    if checkpoint is None:
        return StartPoint(0, 0, args.seed, args.seed, None)
    if checkpoint["num_actions"] != agent.actor.out_features:
        raise CheckpointMismatch(f"{Path(args.resume) / CHECKPOINT}: made for {checkpoint['num_actions']} "
                                 f"actions, but '{args.env}' has {agent.actor.out_features}")
    try:
        agent.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointMismatch(f"{Path(args.resume) / CHECKPOINT}: weights do not fit the agent "
                                 f"({str(error).splitlines()[0]})") from None
    rng = checkpoint["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    iteration, global_step = checkpoint["iteration"], checkpoint["global_step"]
    # a resumed run starts fresh episodes, with seeds it has not used before; the events of the
    # update that wrote the checkpoint (at global_step) are kept, later ones dropped
    return StartPoint(iteration, global_step, args.seed + 1000 * iteration, args.seed + iteration, global_step + 1)


def record_total_timesteps(args, run_dir: Path) -> int | None:
    """A resumed run given another --total-timesteps keeps it in its config, for the next resume; returns
    the total it had before, if it changed."""
    saved_total = read_config(run_dir)["total_timesteps"]
    if args.total_timesteps == saved_total:
        return None
    write_config(run_dir, args)
    return saved_total


# ---------------------------------------------------------------- a classifier run (agents/camal_classifier.py)

CLASSIFIER_CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "batch", "images_seen", "num_classes", "rng")


def save_classifier_checkpoint(path: Path, classifier, optimizer, epoch: int, batch: int, images_seen: int,
                               num_classes: int, mask_generator) -> None:
    """agents/camal_classifier.py's checkpoint: weights, optimizer, where in which epoch it stopped (``batch``
    batches of epoch ``epoch`` done; epochs count from 0), and the RNG states (the epoch's order is drawn from the
    seed and the epoch, so resuming mid-epoch continues the same order)."""
    import torch

    save_state(path, {
        "model": classifier.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "batch": batch,
        "images_seen": images_seen,
        "num_classes": num_classes,
        "rng": {"torch": torch.get_rng_state(), "masks": mask_generator.get_state()},
    })


def load_classifier_checkpoint(run_dir: str | Path) -> dict:
    return load_state(Path(run_dir) / CHECKPOINT, CLASSIFIER_CHECKPOINT_KEYS)


def write_curves(run_dir: Path, rows: list[dict]) -> None:
    """curves.csv: one row per epoch (the columns of the first row; a later row's missing values are empty)."""
    import csv

    columns = list(dict.fromkeys(key for row in rows for key in row))
    tmp = run_dir / (CURVES + ".tmp")
    with open(tmp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, run_dir / CURVES)


def read_curves(run_dir: str | Path) -> list[dict]:
    """curves.csv's rows, numbers as floats (empty cells NaN); [] when the run has none yet."""
    import csv

    path = Path(run_dir) / CURVES
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        return [{key: float(value) if value != "" else float("nan") for key, value in row.items()}
                for row in csv.DictReader(file)]
