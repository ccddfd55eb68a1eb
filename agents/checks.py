"""Bad-input checks both trainers share: each raises ValueError with one line (what was wrong, what is valid)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

SEED_MAX = 2**32 - 1  # numpy's seed range is [0, 2**32 - 1]


def flag(name: str) -> str:
    """The command-line flag of an Args field: num_envs -> --num-envs."""
    return "--" + name.replace("_", "-")


def warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


def check_finite_and_seed(args) -> None:
    """Every float field finite; the seed in numpy's range."""
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{flag(field.name)} must be a finite number, got {value}")
    if not 0 <= args.seed <= SEED_MAX:
        raise ValueError(f"--seed must be in [0, {SEED_MAX}] (numpy's seed range), got {args.seed}")


def check_positive(args, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            raise ValueError(f"{flag(name)} must be > 0, got {getattr(args, name)}")


def check_non_negative(args, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(args, name) < 0:
            raise ValueError(f"{flag(name)} must be >= 0, got {getattr(args, name)}")


def check_writable_dir(path: Path, name: str) -> None:
    """ValueError unless ``path`` is a writable folder or can be created in its nearest existing parent."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name} {path}: {existing} is a file, not a folder")
    try:  # a real try: permission bits do not stop root, and some file systems take no new folders
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError:
        raise ValueError(f"{name} {path}: {existing} is not writable") from None
