"""R_random of a scenario: the mean true return of a uniform random policy, +- its standard error.

    python eval/random_baseline.py --env basic --episodes 2000
    python eval/random_baseline.py --env path/to/my.cfg --episodes 2000 --r-max 100 --out normalisation.json

Plays the scenario in the project's env (frame skip 4, one button at a time, the record's episode
cap) with a uniformly random action every step: the action space is seeded with --seed, the first
episode reset with --seed and the following ones unseeded. Prints the fields to paste into the
scenario's record (scenarios/table.py); --out adds R_random (and R_max) to a JSON file that
``eval/aggregate.py --normalisation FILE`` reads, keyed by the scenario's name (a custom scenario's
absolute .cfg path, as in a run's config.json).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from gymnasium.wrappers import RecordEpisodeStatistics, TimeLimit
from tqdm import tqdm

from envs import check_scenario, make_doom_env


@dataclass
class Args:
    """Measure R_random, the mean true return of a uniform random policy, +- its standard error; print
    the fields for the scenario's record and, with --out, add them to a JSON for eval/aggregate.py."""

    env: str = "basic"
    """scenario: a stock short name (scenarios/table.py) or the path of a .cfg file"""
    episodes: int = 2000
    """random-policy episodes to average (the records use 2000)"""
    seed: int = 1
    """seeds the random actions and the first episode (the records use 1)"""
    r_max: float | None = None
    """upper bound of the return, written beside R_random with --out (default: the record's; a custom
    scenario needs it for normalised aggregates)"""
    out: str | None = None
    """JSON file to add this scenario's constants to (created if missing; other scenarios are kept)"""


def random_returns(env_name: str, episodes: int, seed: int) -> np.ndarray:
    """True returns of ``episodes`` random-policy episodes. The reward and termination of
    envs.make_env without its frame processing, which changes neither."""
    spec = check_scenario(env_name)
    env = make_doom_env(env_name)
    if spec.max_episode_steps is not None:
        env = TimeLimit(env, spec.max_episode_steps)
    env = RecordEpisodeStatistics(env)
    env.action_space.seed(seed)
    returns = []
    try:
        env.reset(seed=seed)
        with tqdm(total=episodes, desc=f"random policy on {Path(env_name).stem}", unit="ep", dynamic_ncols=True) as bar:
            while len(returns) < episodes:
                _, _, terminated, truncated, info = env.step(env.action_space.sample())
                if terminated or truncated:
                    returns.append(float(info["episode"]["r"]))
                    bar.update(1)
                    bar.set_postfix(mean=f"{np.mean(returns):.2f}")
                    env.reset()
    finally:
        env.close()
    return np.asarray(returns)


def mean_and_standard_error(returns: np.ndarray) -> tuple[float, float]:
    standard_error = returns.std(ddof=1) / np.sqrt(len(returns)) if len(returns) > 1 else float("nan")
    return float(returns.mean()), float(standard_error)


def rounded(value: float, standard_error: float) -> str:
    """``value`` to the standard error's first significant digit, plus one."""
    decimals = 1 if not np.isfinite(standard_error) or standard_error <= 0 else max(0, 1 - int(np.floor(np.log10(standard_error))))
    return f"{value:.{decimals}f}"


def write_constants(path: Path, name: str, entry: dict) -> None:
    """Add (or replace) one scenario's entry in the JSON file, keeping the others."""
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=2) + "\n")


def main(args: Args) -> dict:
    """Measure; bad input exits with a one-line error before anything is played or written."""
    try:
        if args.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
        spec = check_scenario(args.env)
        if args.out is not None and Path(args.out).exists():
            json.loads(Path(args.out).read_text())
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        sys.exit(f"error: {error}")
    returns = random_returns(args.env, args.episodes, args.seed)
    mean, standard_error = mean_and_standard_error(returns)
    text = f"{rounded(mean, standard_error)} +- {rounded(standard_error, standard_error)} over {len(returns)} episodes"
    r_max = args.r_max if args.r_max is not None else spec.r_max
    entry = {"r_random": mean, "r_random_se": standard_error, "episodes": len(returns), "seed": args.seed,
             "r_random_source": f"{text}, eval/random_baseline.py --seed {args.seed}", "r_max": r_max}
    print(f"R_random of {spec.name}: {text} (seed {args.seed})")
    print(f'for its record in scenarios/table.py: r_random={rounded(mean, standard_error)}, '
          f'r_random_source="{text}",')
    if args.out is not None:
        write_constants(Path(args.out), spec.name, entry)
        note = "" if r_max is not None else " (no R_max: add \"r_max\" or rerun with --r-max before aggregating)"
        print(f"wrote {args.out}{note}")
    return entry


if __name__ == "__main__":
    main(tyro.cli(Args))
