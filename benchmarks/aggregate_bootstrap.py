"""Speed and noise of eval/stats.py's stratified bootstrap on a 24-run study (4 methods x 2 scenarios x 3 seeds).

    python benchmarks/aggregate_bootstrap.py --rounds 3 --reps 2000 --noise-seeds 10

1. rliable's ``get_interval_estimates`` and eval/stats.py's vectorised ``interval_estimates`` on the same
   score matrices and seed, interleaved, ``--rounds`` times each: wall time and whether the intervals are equal.
2. Bootstrap noise of the CI endpoints at the default 50,000 reps: the standard deviation, over
   ``--noise-seeds`` bootstrap seeds, of each endpoint of the IQM, mean, median and optimality-gap CIs,
   for 4 methods of 3 seeds x 2 scenarios and of 10 seeds x 5 scenarios (uniform scores).
3. ``eval/aggregate.py`` end to end (default flags, 50,000 reps) on 24 run folders written as TensorBoard
   event files (200 episodes each) with attention and shift evaluations: wall time.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from rliable import library as rly
from rliable import metrics

from torch.utils.tensorboard import SummaryWriter

from eval.aggregate import Args as AggregateArgs
from eval.aggregate import main as aggregate
from eval.stats import interval_estimates, score_aggregates


@dataclass
class Args:
    rounds: int = 3
    """timed rounds of each implementation (interleaved)"""
    reps: int = 2000
    """bootstrap replications of the timed comparison (rliable takes ~1 ms a replication)"""
    noise_seeds: int = 10
    """bootstrap seeds over which the CI endpoints' spread is measured at the default reps"""


def rliable_aggregates(scores: np.ndarray) -> np.ndarray:
    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores),
                     metrics.aggregate_median(scores), metrics.aggregate_optimality_gap(scores)])


def main(args: Args) -> None:
    if min(args.rounds, args.reps, args.noise_seeds) < 1:
        raise SystemExit(f"error: --rounds, --reps and --noise-seeds must be >= 1, got "
                         f"{args.rounds}, {args.reps}, {args.noise_seeds}")
    rng = np.random.default_rng(0)
    scores = {m: rng.uniform(0.2, 0.9, size=(3, 2)) + 0.05 * i for i, m in enumerate(["vanilla", "camal", "rrr", "x"])}
    times = {"rliable": [], "vectorised": []}
    for _ in range(args.rounds):
        np.random.seed(0)
        start = time.perf_counter()
        _, reference = rly.get_interval_estimates(scores, rliable_aggregates, reps=args.reps)
        times["rliable"].append(time.perf_counter() - start)
        start = time.perf_counter()
        _, vectorised = interval_estimates(scores, score_aggregates, args.reps, np.random.RandomState(0))
        times["vectorised"].append(time.perf_counter() - start)
        equal = all(np.allclose(reference[m], vectorised[m], rtol=1e-12, atol=0) for m in scores)
    slow, fast = np.median(times["rliable"]), np.median(times["vectorised"])
    print(f"\n{args.reps} reps, 4 methods x 2 scenarios x 3 seeds: rliable {slow:.2f} s, vectorised {fast:.3f} s "
          f"(median of {args.rounds}), ratio {slow / fast:.0f}x; intervals equal: {equal}")

    reps = AggregateArgs.reps
    for seeds, scenarios in ((3, 2), (10, 5)):
        study = {m: rng.uniform(0.2, 0.9, size=(seeds, scenarios)) for m in ["vanilla", "camal", "rrr", "x"]}
        endpoints = np.stack([np.stack(list(interval_estimates(study, score_aggregates, reps,
                                                               np.random.RandomState(seed))[1].values()))
                              for seed in range(args.noise_seeds)])  # (seeds, methods, 2, 4)
        spread = endpoints.std(axis=0, ddof=1)
        width = (endpoints[:, :, 1] - endpoints[:, :, 0]).mean(axis=0)
        print(f"\nCI endpoint noise at {reps} reps, {seeds} seeds x {scenarios} scenarios: std over "
              f"{args.noise_seeds} bootstrap seeds (max over 4 methods):")
        for i, name in enumerate(("IQM", "mean", "median", "optimality gap")):
            print(f"  {name:15s} lower {spread[:, 0, i].max():.2e}  upper {spread[:, 1, i].max():.2e}  "
                  f"(mean CI width {width[:, i].mean():.3f})")

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for run, (method, env, seed) in enumerate((m, e, s) for m in ("vanilla", "camal", "rrr", "camal-random")
                                                 for e in ("basic", "defend_the_center") for s in (1, 2, 3)):
            run_dir = root / "runs" / f"{env}__{method}__{seed}"
            writer = SummaryWriter(str(run_dir))
            for step in range(500, 100_001, 500):
                writer.add_scalar("charts/episodic_return", float(rng.normal(step / 2000)), step)
            writer.close()
            (run_dir / "config.json").write_text(json.dumps(dict(env=env, method=method, seed=seed,
                                                                 total_timesteps=100_000)))
            means = {name: float(rng.uniform()) for name in ("relevance_mass", "relevance_mass_chance", "pointing_game",
                                                              "deletion_auc", "occlusion_drop")}
            (run_dir / "attention_eval.json").write_text(json.dumps({"means": means}))
            (run_dir / "shift_eval.json").write_text(json.dumps({"means": {"shift_return_ratio": float(rng.uniform()),
                                                                           "shift_action_agreement": 0.5}}))
        start = time.perf_counter()
        aggregate(AggregateArgs(runs_dir=str(root / "runs"), out=str(root / "out")))
        print(f"\neval/aggregate.py on 24 runs (default {reps} reps, 8 evaluation metrics): "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(tyro.cli(Args))
