"""Two methods on the same frames: a paired comparison of their attention and occlusion metrics, seed by seed.

    python eval/paired_frames.py runs/basic_eval50 --baseline vanilla --method camal --episodes 20

Each method's run on a seed plays ``--episodes`` episodes; the frames of both runs are pooled, and both agents
are evaluated on every pooled frame with a target (eval/attention.py's metrics, same frames, same random
regions), so that a difference between them is not a difference of the frames they happened to visit. Per seed
the per-frame differences (method - baseline) are averaged; the test is the paired t-test over seeds (frames of
one seed are not independent, seeds are). Writes a JSON (``--out``) and prints a table.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from agents.run_folder import ALIGNMENT, CHECKPOINT, read_config
from eval.attention import FAITHFULNESS, EvalError, Frames, evaluate, load_agent, roll_out
from eval.stats import paired_p_value

GAINS = {"occlusion_gain": ("occlusion_drop", "occlusion_drop_random"),
         "occlusion_gain_dilated": ("occlusion_drop_dilated", "occlusion_drop_dilated_random"),
         "deletion_gain": ("deletion_auc_random", "deletion_auc"),
         "insertion_gain": ("insertion_auc", "insertion_auc_random")}
METRICS = (*ALIGNMENT, *FAITHFULNESS, *GAINS)


@dataclass
class Args:
    runs: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUNS_DIR")]
    """folder holding the run folders (config.json and checkpoint.pt), e.g. a study's results folder"""
    baseline: str = "vanilla"
    """the method compared against"""
    method: str = "camal"
    """the method compared"""
    env: str | None = None
    """the scenario (None: the one scenario the runs share)"""
    episodes: int = 20
    """episodes each run plays to collect frames (seeds seed, seed+1, ...)"""
    seed: int = 0
    """seed of the episodes, of the sampled actions and of the random regions"""
    deletion_steps: int = 20
    """points of the deletion / insertion curves"""
    out: str | None = None
    """JSON file to write (None: RUNS_DIR/paired_frames_METHOD_vs_BASELINE.json)"""
    cuda: bool = True
    """use CUDA when it is available"""


def find_runs(runs_dir: Path, env: str | None, methods: tuple[str, str]) -> dict[int, dict[str, Path]]:
    """{seed: {method: run folder}} of the seeds where both methods have a run with a checkpoint."""
    found: dict[int, dict[str, Path]] = {}
    envs = set()
    for checkpoint in sorted(runs_dir.rglob(CHECKPOINT)):
        config = read_config(checkpoint.parent)
        if config.get("method") in methods and (env is None or config.get("env") == env):
            envs.add(config["env"])
            found.setdefault(int(config["seed"]), {})[config["method"]] = checkpoint.parent
    if len(envs) > 1:
        raise EvalError(f"{runs_dir}: runs on several scenarios ({', '.join(sorted(envs))}); choose one with --env")
    paired = {seed: runs for seed, runs in sorted(found.items()) if len(runs) == 2}
    if len(paired) < 2:
        raise EvalError(f"{runs_dir}: {len(paired)} seed(s) with runs of both {methods[0]} and {methods[1]}; "
                        f"a paired test needs 2 or more")
    return paired


def per_frame(evaluation) -> dict[str, torch.Tensor]:
    """Every metric of METRICS per used frame (alignment NaN where the map is all zero)."""
    scores = dict(evaluation.scores)
    for name in ALIGNMENT:
        scores[name] = torch.where(evaluation.zero_map, torch.nan, scores[name].float())
    for name, (plus, minus) in GAINS.items():
        scores[name] = scores[plus] - scores[minus]
    return scores


def compare_seed(runs: dict[str, Path], args: Args, device) -> dict:
    loaded = {method: load_agent(str(folder), device) for method, folder in runs.items()}
    parts = [roll_out(loaded[method], args.episodes, args.seed, False, device)[0] for method in loaded]
    pooled = Frames(*(np.concatenate([getattr(part, field) for part in parts]) for field in Frames._fields))
    scores = {method: per_frame(evaluate(agent.agent, pooled, args.deletion_steps, 256, args.seed, device))
              for method, agent in loaded.items()}
    result = {"frames": int(len(pooled.pixels)), "frames_with_target": int(len(scores[args.method]["occlusion_drop"]))}
    for name in METRICS:
        difference = (scores[args.method][name] - scores[args.baseline][name]).double()
        result[name] = {args.baseline: float(torch.nanmean(scores[args.baseline][name].double())),
                        args.method: float(torch.nanmean(scores[args.method][name].double())),
                        "difference": float(torch.nanmean(difference))}
    return result


def run(args: Args) -> dict:
    if args.episodes < 1 or args.deletion_steps < 1:
        raise EvalError("--episodes and --deletion-steps must be >= 1")
    if args.method == args.baseline:
        raise EvalError(f"--method and --baseline are both '{args.method}'; give two methods")
    runs_dir = Path(args.runs)
    if not runs_dir.is_dir():
        raise EvalError(f"{runs_dir}: no such folder")
    out = Path(args.out) if args.out else runs_dir / f"paired_frames_{args.method}_vs_{args.baseline}.json"
    if out.is_dir():
        raise EvalError(f"--out {out}: is a folder; give a .json file name")
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    seeds = find_runs(runs_dir, args.env, (args.baseline, args.method))
    per_seed = {}
    for seed, runs in seeds.items():
        print(f"seed {seed}: {runs[args.baseline].name} and {runs[args.method].name}", flush=True)
        per_seed[seed] = compare_seed(runs, args, device)
    summary = {}
    for name in METRICS:
        method = np.array([per_seed[s][name][args.method] for s in seeds])
        baseline = np.array([per_seed[s][name][args.baseline] for s in seeds])
        summary[name] = {args.baseline: float(baseline.mean()), args.method: float(method.mean()),
                         "difference": float((method - baseline).mean()),
                         "seeds_method_higher": int((method > baseline).sum()),
                         "p_paired": paired_p_value(method, baseline)}
    result = {"runs": str(runs_dir), "baseline": args.baseline, "method": args.method, "seeds": list(seeds),
              "episodes_per_run": args.episodes, "eval_seed": args.seed, "deletion_steps": args.deletion_steps,
              "summary": summary, "per_seed": {str(s): v for s, v in per_seed.items()},
              "notes": "Both agents on the pooled frames of both runs of a seed; per seed the mean over frames with a "
                       "target (alignment: frames with a non-zero map); p_paired: paired t-test over seeds, two-sided."}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'metric':<32}{args.baseline:>10}{args.method:>10}{'diff':>10}{'p':>8}  seeds higher")
    for name, row in summary.items():
        print(f"{name:<32}{row[args.baseline]:>10.4f}{row[args.method]:>10.4f}{row['difference']:>10.4f}"
              f"{row['p_paired']:>8.2g}  {row['seeds_method_higher']}/{len(seeds)}")
    print(f"wrote {out}")
    return result


def main(args: Args) -> dict:
    """Compare; input problems exit with one line `error: ...` on stderr and status 1."""
    try:
        return run(args)
    except (EvalError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main(tyro.cli(Args))
