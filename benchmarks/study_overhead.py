"""The study runner's cost: a run under experiments/study.py against the same run started directly,
and the aggregate SPS of 1, 2, 4 concurrent runs, all in one invocation on the same machine.

    python benchmarks/study_overhead.py --steps 8192 --repeats 2 --concurrent 1 2 4

1. overhead: `agents/ppo_camal.py` started directly vs as a one-run study on a local Ray (same flags,
   same CPUs, OMP threads and env workers as the runner gives it), alternated --repeats times; SPS is
   each run's last `charts/SPS` scalar (the trainer's own count, startup excluded), and the wall time
   of the runner includes starting Ray and the evaluation of the run;
2. scaling: N runs (seeds 1..N) as one study with N concurrent runs sharing the machine's CPUs
   (--cpus-per-run CORES/N); aggregate SPS is the sum of the runs' SPS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.methods import METHODS
from envs import check_scenario

ROOT = Path(__file__).resolve().parents[1]

STUDY = """[budgets]
{env} = {steps}
[[runs]]
scenarios = ["{env}"]
methods = ["{method}"]
seeds = {seeds}
[flags]
image_every = 0
[eval]
episodes = 1
video = false
"""


@dataclass
class Args:
    env: str = "basic"
    """scenario"""
    method: str = "vanilla"
    """method of every run (vanilla, camal, camal-random, camal-shuffled, rrr)"""
    steps: int = 8192
    """environment steps per run (8 envs x 128 steps = 1024 per update)"""
    repeats: int = 2
    """direct / runner pairs of the overhead measurement, alternated"""
    concurrent: list[int] = field(default_factory=lambda: [1, 2, 4])
    """numbers of concurrent runs of the scaling measurement"""
    cores: int = 0
    """CPUs given to the runs (0: all of this machine's)"""


def final_sps(runs_root: Path) -> list[float]:
    """Last charts/SPS of every run folder under runs_root."""
    values = []
    for config in sorted(runs_root.rglob("config.json")):
        scalars = EventAccumulator(str(config.parent)).Reload().Scalars("charts/SPS")
        values.append(scalars[-1].value)
    return values


def direct_run(args: Args, cores: int, out: Path) -> tuple[float, float]:
    """The trainer as the runner starts it for one run with all the cores: (SPS, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(cores), "MKL_NUM_THREADS": str(cores), "PYTHONUNBUFFERED": "1"}
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / "agents/ppo_camal.py"), "--env", args.env, "--total-timesteps",
                    str(args.steps), "--runs-dir", str(out), "--image-every", "0", "--no-cuda",
                    *METHODS[args.method]],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=out.parent)
    return final_sps(out)[0], time.time() - start


def study_run(args: Args, seeds: int, cpus_per_run: float, cores: int, out: Path) -> tuple[list[float], float]:
    """N runs as one study on a local Ray of `cores` CPUs: (each run's SPS, wall seconds)."""
    study = out.with_suffix(".toml")
    study.write_text(STUDY.format(env=args.env, steps=args.steps, method=args.method, seeds=list(range(1, seeds + 1))))
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / "experiments/study.py"), str(study), "--results-dir", str(out),
                    "--cpus-per-run", str(cpus_per_run), "--num-cpus", str(cores), "--refresh", "600"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return final_sps(out), time.time() - start


def main(args: Args) -> None:
    cores = args.cores or len(os.sched_getaffinity(0))
    if args.method not in METHODS:
        sys.exit(f"error: unknown --method {args.method!r}; valid: {', '.join(METHODS)}")
    try:
        check_scenario(args.env)
    except ValueError as error:
        sys.exit(f"error: --env: {error}")
    if args.steps < 1024 or args.repeats < 1 or not args.concurrent or min(args.concurrent) < 1 or cores < 1:
        sys.exit("error: --steps >= 1024, --repeats >= 1, --concurrent values >= 1 and --cores >= 0 are required")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"{args.env}, {args.method}, {args.steps} steps per run, {cores} CPUs", flush=True)
        direct, runner = [], []
        for i in range(args.repeats):
            sps, wall = direct_run(args, cores, tmp / f"direct{i}")
            direct.append(sps)
            print(f"direct    #{i + 1}: {sps:6.0f} SPS, {wall:5.0f} s wall", flush=True)
            (sps,), wall = study_run(args, 1, cores, cores, tmp / f"runner{i}")
            runner.append(sps)
            print(f"runner    #{i + 1}: {sps:6.0f} SPS, {wall:5.0f} s wall (with Ray start and evaluation)", flush=True)
        print(f"overhead: runner / direct SPS = {sum(runner) / sum(direct):.3f}", flush=True)
        for n in args.concurrent:
            values, wall = study_run(args, n, cores / n, cores, tmp / f"concurrent{n}")
            print(f"{n} concurrent runs: aggregate {sum(values):6.0f} SPS "
                  f"(per run {', '.join(f'{v:.0f}' for v in values)}), {wall:5.0f} s wall", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
