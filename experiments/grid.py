"""Run a grid of trainings (scenario x method x seed) in parallel, optionally evaluating each.

    python experiments/grid.py --envs basic defend_the_center --methods vanilla camal rrr camal-random \\
        --seeds 1 2 3 --jobs 4 --eval-episodes 10

Each run is `python agents/ppo_camal.py` with the method's flags; its console output goes to
RUNS_DIR/logs/. Then `python eval/aggregate.py RUNS_DIR` compares the methods.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]

# method label (as written in config.json) -> flags of agents/ppo_camal.py
METHODS: dict[str, list[str]] = {
    "vanilla": ["--attn-loss", "none"],
    "camal": ["--attn-loss", "camal"],
    "rrr": ["--attn-loss", "rrr"],
    "camal-random": ["--attn-loss", "camal", "--mask-source", "random"],
    "camal-shuffled": ["--attn-loss", "camal", "--mask-source", "shuffled"],
}


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
    """folder for the run folders (and logs/)"""
    eval_episodes: int = 0
    """after training, run eval/attention.py and eval/shift.py with this many episodes (0: skip)"""
    threads_per_run: int = 1
    """torch threads per run (OMP_NUM_THREADS), so parallel runs do not oversubscribe the cores"""
    camal_coef: float | None = None
    """lambda for every run (default: the agent's default)"""


def run_one(args: Args, env: str, method: str, seed: int) -> str:
    name = f"{env}__{method}__{seed}"
    log = Path(args.runs_dir) / "logs" / f"{name}.log"
    child_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_run), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "agents/ppo_camal.py"), "--env", env, "--seed", str(seed),
           "--total-timesteps", str(args.total_timesteps), "--runs-dir", args.runs_dir, *METHODS[method]]
    if args.camal_coef is not None:
        cmd += ["--camal-coef", str(args.camal_coef)]
    start = time.time()
    with open(log, "w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env)
        if code == 0 and args.eval_episodes:
            run_dir = max(Path(args.runs_dir).glob(f"{env}__{method}__{seed}__*"), key=os.path.getmtime)
            for evaluation in (["eval/attention.py", "--no-video"], ["eval/shift.py"]):
                code = code or subprocess.call([sys.executable, str(ROOT / evaluation[0]), str(run_dir),
                                                "--episodes", str(args.eval_episodes), *evaluation[1:]],
                                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               env=child_env)
    status = "ok" if code == 0 else f"FAILED (exit {code}, see {log})"
    return f"{name}: {status} in {time.time() - start:.0f} s"


def main(args: Args) -> None:
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        sys.exit(f"error: unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    (Path(args.runs_dir) / "logs").mkdir(parents=True, exist_ok=True)
    grid = [(env, method, seed) for env in args.envs for seed in args.seeds for method in args.methods]
    print(f"{len(grid)} runs, {args.jobs} at a time, logs in {args.runs_dir}/logs", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        failures = 0
        for i, result in enumerate(pool.map(lambda job: run_one(args, *job), grid), 1):
            failures += "FAILED" in result
            print(f"[{i}/{len(grid)}] {result}", flush=True)
    if failures:
        sys.exit(f"error: {failures} of {len(grid)} runs failed")


if __name__ == "__main__":
    main(tyro.cli(Args))
