"""The former grid runner's flags, as an alias of the study runner (experiments/study.py, on Ray).

    python experiments/grid.py --envs basic --methods vanilla camal --seeds 1 2 3 --jobs 2 --eval-episodes 10

writes the grid as a study file, RUNS_DIR/grid.toml, and runs `experiments/study.py RUNS_DIR/grid.toml
--results-dir RUNS_DIR` on a local Ray of jobs x threads-per-run CPUs. Rerunning it resumes the grid.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from study import StudyError, parse_study  # experiments/, this script's folder


@dataclass
class Args:
    envs: list[str] = field(default_factory=lambda: ["basic"])
    """scenarios to train on"""
    methods: list[str] = field(default_factory=lambda: ["vanilla", "camal"])
    """methods: vanilla, camal, rrr, camal-random, camal-shuffled"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds, one run per (scenario, method, seed)"""
    total_timesteps: int = 100_000
    """environment steps per run"""
    jobs: int = 2
    """runs trained at the same time"""
    runs_dir: str = "runs"
    """results directory of the study (the run folders, and grid.toml)"""
    eval_episodes: int = 10
    """episodes of eval/attention.py after training (every run of a study is evaluated)"""
    threads_per_run: int = 1
    """CPUs, torch threads and env workers per run"""
    camal_coef: float | None = None
    """lambda for every run (default: the agent's default)"""


def study_file(args: Args) -> str:
    flags = "" if args.camal_coef is None else f"\n[flags]\ncamal_coef = {args.camal_coef}\n"
    return ("[budgets]\n" + "".join(f"{env} = {args.total_timesteps}\n" for env in args.envs)
            + f"\n[[runs]]\nscenarios = {json.dumps(args.envs)}\nmethods = {json.dumps(args.methods)}\n"
            f"seeds = {json.dumps(args.seeds)}\n{flags}\n[eval]\nepisodes = {args.eval_episodes}\nvideo = false\n")


def main(args: Args) -> None:
    if args.jobs < 1 or args.threads_per_run < 1:
        sys.exit(f"error: --jobs and --threads-per-run must be >= 1, got {args.jobs} and {args.threads_per_run}")
    study = Path(args.runs_dir) / "grid.toml"
    try:
        parse_study(study_file(args), "the grid", "grid")
    except StudyError as error:
        sys.exit(f"error: {error}")
    try:
        study.parent.mkdir(parents=True, exist_ok=True)
        study.write_text(study_file(args))
    except OSError as error:
        sys.exit(f"error: --runs-dir {args.runs_dir} cannot be written ({error.strerror or error})")
    runner = Path(__file__).with_name("study.py")
    os.execv(sys.executable, [sys.executable, str(runner), str(study), "--results-dir", args.runs_dir,
                              "--cpus-per-run", str(args.threads_per_run),
                              "--num-cpus", str(args.jobs * args.threads_per_run)])


if __name__ == "__main__":
    main(tyro.cli(Args))
