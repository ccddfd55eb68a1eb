"""Steps to a return: the first step at which each run's mean of its last episodes reaches a target.

    python eval/reach.py results/paper results/bf16_check --env basic --target 63

For every complete run (folder or record, as eval/aggregate.py reads them) under each folder given:
the first global step at which the mean return of the last ``--window`` episodes reached
``--target`` (never: "-"), and that mean at the end of the run; one table per folder, so that two
setups (e.g. fp32 and --bf16 runs of the same seeds) read side by side.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from eval import selection
from eval.runs import SkippedRun, find_run_dirs, load_run


@dataclass
class Args:
    folders: tyro.conf.Positional[list[str]]
    """folders of runs or run records (e.g. results/paper, runs/); each gets its own table"""
    target: float
    """the return to reach (e.g. 63 on basic: normalised 0.9 between R_random and R_max)"""
    env: str | None = None
    """only the runs of this scenario (None: all)"""
    methods: list[str] | None = None
    """only the runs of these methods (None: all)"""
    seeds: list[int] | None = None
    """only the runs of these seeds (None: all)"""
    window: int = 20
    """episodes in the moving mean (CleanRL-style: the mean of the last 20)"""


def first_step_reaching(steps: np.ndarray, returns: np.ndarray, target: float, window: int) -> int | None:
    """The step of the first episode at which the mean of the last ``window`` episodes is >= ``target``."""
    if len(returns) < window:
        return None
    means = np.convolve(returns, np.ones(window) / window, mode="valid")
    reached = np.flatnonzero(means >= target)
    return int(steps[reached[0] + window - 1]) if len(reached) else None


def main(args: Args) -> None:
    if args.window < 1:
        sys.exit(f"error: --window must be >= 1, got {args.window}")
    for folder in args.folders:
        dirs, _ = find_run_dirs(Path(folder))
        runs = []
        for run_dir in dirs:
            try:
                runs.append(load_run(run_dir))
            except SkippedRun:
                continue
        print(f"\n{folder}: first step at which the mean of the last {args.window} episodes reached {args.target:g}")
        try:  # a folder without a match gets a line saying why, and the other folders their tables
            runs = selection.select_runs(runs, [args.env] if args.env else None, args.methods, args.seeds, folder)
        except ValueError as error:
            print(f"  ({error})")
            continue
        rows = [(run.env, run.method, run.seed, first_step_reaching(run.steps, run.returns, args.target, args.window),
                 float(np.mean(run.returns[-args.window:])), run.total_timesteps) for run in runs]
        print(f"  {'scenario':18s} {'method':14s} {'seed':>4s} {'step':>9s} {'final mean':>10s} {'of steps':>9s}")
        for env, method, seed, step, final, total in sorted(rows):
            print(f"  {env:18s} {method:14s} {seed:4d} {step if step is not None else '-':>9} {final:10.1f} {total:9d}")


if __name__ == "__main__":
    main(tyro.cli(Args))
