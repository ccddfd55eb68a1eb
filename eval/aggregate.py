"""Aggregate a folder of training runs into figures and tables, with rliable's statistics.

    python eval/aggregate.py [RUNS_DIR] --out aggregate/

A run is any folder under RUNS_DIR holding a ``config.json`` (keys ``env``, ``method``, ``seed``,
``total_timesteps``) and TensorBoard event files with the scalar ``charts/episodic_return`` (the
true episodic return, logged at the global step at which each episode ended), or a run record of
eval/record.py (``returns.csv`` instead of the event files). Folders that are not complete runs (events
without config.json, no returns, last episode before the final window) are listed in a warning and
left out; methods run on different seed sets are warned about.

- Final score of a run: the mean true return of the episodes that ended in the last
  ``--final-fraction`` (default 10%) of the run's logged steps, i.e. at a step >= (1 - fraction) x L,
  where L is the step of the run's last logged episode.
- Normalised per scenario, ``(R - R_random) / (R_max - R_random)``, with the constants of the
  scenario's record (scenarios/table.py) or of ``--normalisation FILE`` (from eval/random_baseline.py).
- IQM, mean, median and optimality gap over scenarios x seeds with stratified-bootstrap 95% CIs
  (rliable ``get_interval_estimates``, ``--reps`` replications), per method. As in rliable, the
  median is the median over scenarios of the mean over seeds, the optimality gap is
  ``1 - mean(min(score, 1))``. Probability of improvement of every method over ``--baseline``:
  P(X > Y) per scenario (ties count 1/2), averaged over scenarios, with CIs from rliable's stratified
  independent bootstrap.
- Resumed runs: the training script reopens its writer with ``purge_step``, and TensorBoard drops
  the episodes the first session logged from that step on, so each episode counts once.
- Sample-efficiency curves: at ``--curve-points`` evenly spaced fractions f of each run's logged
  steps, the mean return of the episodes that ended in the window [(f - final_fraction) x L, f x L]
  (a running mean; the last point is the final score), normalised, then IQM with CIs over runs.
- Attention metrics: the per-run means of ``attention_eval.json`` (key ``"means"``), when present,
  aggregated the same way (IQM, mean, median with CIs; not normalised); likewise the occlusion drops
  (in attention_eval.json) and the background-shift metrics of ``shift_eval.json``.
- Significance: Welch's t-test (two-sided, unequal variances) over seeds of ``--reference`` against
  every other method, per scenario, for the final return and every evaluation metric; p-value and n.

Outputs in --out: ``interval_estimates.png``, ``sample_efficiency.png``,
``probability_of_improvement.png``, ``attention.png`` and ``evidence.png`` (occlusion, shift; when
there are evaluations), ``p_values.png`` and ``aggregate.csv``, every number in long format; tables are
printed on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tyro  # noqa: E402
from rliable import plot_utils  # noqa: E402
from scipy.stats import trim_mean, ttest_ind  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator  # noqa: E402

from eval import selection  # noqa: E402
from scenarios import SCENARIOS, is_config_path, short_name  # noqa: E402

RETURN_TAG = "charts/episodic_return"
ATTENTION_FILE = "attention_eval.json"
SHIFT_FILE = "shift_eval.json"
RETURNS_FILE = "returns.csv"
"""episodic-return curve of a run record (eval/record.py): columns step, return"""
EVALUATION_FILES = (ATTENTION_FILE, SHIFT_FILE)
EVIDENCE_PREFIXES = ("occlusion_", "shift_")
"""evaluation metrics drawn in evidence.png (the others in attention.png)"""

SCORE_AGGREGATES = ("IQM", "mean", "median", "optimality gap")
ATTENTION_AGGREGATES = ("IQM", "mean", "median")


@dataclass
class Args:
    """Aggregate training runs into figures, a CSV and a table. A run's final score is the mean true
    return of the episodes that ended in the last --final-fraction of its logged steps, normalised per
    scenario as (R - R_random) / (R_max - R_random); IQM, mean, median and optimality gap with
    stratified-bootstrap 95% CIs (rliable), probability of improvement over --baseline,
    sample-efficiency curves."""

    runs_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUNS_DIR")] = "runs"
    """folder searched recursively for runs (folders holding a config.json)"""
    out: str = "aggregate"
    """folder the figures and aggregate.csv are written to (created if missing; git ignores folders named aggregate)"""
    final_fraction: float = 0.1
    """final score = mean return of the episodes that ended in this last fraction of a run's logged steps"""
    reps: int = 50000
    """bootstrap replications of each interval estimate"""
    curve_points: int = 20
    """number of evenly spaced points of the sample-efficiency curves"""
    baseline: str = "vanilla"
    """method that the others are compared with by probability of improvement"""
    seed: int = 0
    """seed of numpy's global generator, set before each bootstrap (rliable draws its resamples from it)"""
    attention: bool = True
    """also aggregate the metrics of attention_eval.json and shift_eval.json files (--no-attention: returns only)"""
    normalisation: str | None = None
    """JSON of R_random and R_max per scenario, from eval/random_baseline.py --out (for custom scenarios, or
    to replace a stock scenario's constants)"""
    reference: str = "camal"
    """method tested against every other method (Welch's t-test over seeds, per scenario and metric)"""
    scenarios: list[str] | None = None
    """aggregate only the runs of these scenarios (None: all); e.g. the scenarios where every method ran"""
    methods: list[str] | None = None
    """aggregate only the runs of these methods (None: all)"""
    seeds: list[int] | None = None
    """aggregate only the runs of these seeds (None: all); e.g. the seeds every method has so far"""


@dataclass
class Run:
    path: Path
    env: str
    method: str
    seed: int
    total_timesteps: int
    steps: np.ndarray
    """global step at which each episode ended, ascending"""
    returns: np.ndarray
    """true return of each episode"""
    evaluation: dict[str, float] = field(default_factory=dict)
    """per-run means of attention_eval.json and shift_eval.json"""
    r_random: float = np.nan
    """R_random of the run's scenario (set by load_runs)"""
    r_max: float = np.nan
    """R_max of the run's scenario (set by load_runs)"""


class SkippedRun(Exception):
    """A folder that is not a complete run (refused, crashed or unfinished): listed in a warning, left out."""


def find_run_dirs(runs_dir: Path) -> tuple[list[Path], list[str]]:
    """Folders holding a config.json (runs and run records), and the folders with TensorBoard events but
    no config.json (listed as skipped)."""
    if not runs_dir.is_dir():
        raise SystemExit(f"error: no runs found: {runs_dir.resolve()} is not a folder")
    dirs = sorted(p.parent for p in runs_dir.rglob("config.json"))
    orphans = sorted({p.parent for p in runs_dir.rglob("events.out.tfevents.*")} - set(dirs))
    if not dirs:
        raise SystemExit(f"error: no runs found: no folder under {runs_dir.resolve()} holds a config.json")
    return dirs, [f"{d}: TensorBoard events but no config.json" for d in orphans]


def read_episodic_returns(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, returns) of every episode: a record's returns.csv, else every ``charts/episodic_return``
    scalar in the folder's event files."""
    if (run_dir / RETURNS_FILE).is_file():
        try:
            table = pd.read_csv(run_dir / RETURNS_FILE)
            return table["step"].to_numpy(np.int64), table["return"].to_numpy(np.float64)
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as error:
            raise SystemExit(f"error: cannot read {run_dir / RETURNS_FILE} (columns step, return): {error!r}")
    accumulator = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})  # 0: keep every scalar
    accumulator.Reload()
    if RETURN_TAG not in accumulator.Tags()["scalars"]:
        return np.zeros(0, np.int64), np.zeros(0)
    events = sorted(accumulator.Scalars(RETURN_TAG), key=lambda e: e.step)
    return np.array([e.step for e in events], np.int64), np.array([e.value for e in events], np.float64)


def read_evaluation(path: Path) -> dict[str, float]:
    """The finite per-run means (key ``"means"``) of an attention_eval.json or shift_eval.json."""
    try:
        means = json.loads(path.read_text())["means"]
        values = {k: float(v) for k, v in means.items() if v is not None}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise SystemExit(f"error: cannot read the per-run means ('means') of {path}: {error!r}")
    # NaN (or null): e.g. no frame with a target, or only all-zero maps; such a run has no value to aggregate
    undefined = sorted(k for k, v in values.items() if not np.isfinite(v))
    if undefined:
        print(f"note: {path} has no value for {', '.join(undefined)}; left out", flush=True)
    return {k: v for k, v in values.items() if np.isfinite(v)}


def load_run(run_dir: Path, final_fraction: float = 0.1) -> Run:
    """A run folder or run record; SkippedRun if it is not a complete run."""
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SkippedRun(f"unreadable config.json ({error})")
    missing = [key for key in ("env", "method", "seed", "total_timesteps") if key not in config]
    if missing:
        raise SkippedRun(f"config.json lacks the key(s) {', '.join(missing)}")
    steps, returns = read_episodic_returns(run_dir)
    if len(returns) == 0:
        raise SkippedRun(f"no '{RETURN_TAG}' scalars (a refused, crashed or just started run)")
    if steps[-1] < (1 - final_fraction) * int(config["total_timesteps"]):
        raise SkippedRun(f"unfinished: episodes logged up to step {steps[-1]} of {config['total_timesteps']}")
    evaluation = {}
    for name in EVALUATION_FILES:
        if (run_dir / name).exists():
            evaluation.update(read_evaluation(run_dir / name))
    return Run(run_dir, str(config["env"]), str(config["method"]), int(config["seed"]),
               int(config["total_timesteps"]), steps, returns, evaluation)


def normalisation_file(path: str | None) -> dict[str, dict]:
    """{scenario: {"r_random": ..., "r_max": ...}} of a file from eval/random_baseline.py --out."""
    if path is None:
        return {}
    try:
        entries = json.loads(Path(path).read_text())
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            raise ValueError("expected {scenario: {\"r_random\": R, \"r_max\": R}}")
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot read --normalisation {path}: {error}")
    # custom scenarios are keyed by their absolute .cfg path, as config.json records them
    return {str(Path(k).expanduser().resolve()) if is_config_path(k) else k: v for k, v in entries.items()}


def normalisation_bounds(env: str, entries: dict[str, dict]) -> tuple[float, float]:
    """(R_random, R_max) of a scenario, from --normalisation or its record; refuses a scenario lacking one."""
    entry = entries.get(env, {})
    record = SCENARIOS.get(env)
    r_random = entry.get("r_random", record.r_random if record else None)
    r_max = entry.get("r_max", record.r_max if record else None)
    if r_random is None or r_max is None:
        missing = " and ".join(n for n, v in (("R_random", r_random), ("R_max", r_max)) if v is None)
        raise SystemExit(f"error: scenario {env} has no {missing}, so its scores cannot be normalised: run "
                         f"`python eval/random_baseline.py --env {env} --episodes 2000 --r-max R_MAX --out "
                         f"normalisation.json` and pass --normalisation normalisation.json")
    return float(r_random), float(r_max)


def warn_different_seed_sets(runs: list[Run]) -> None:
    """Methods compared on one scenario with different seeds: not an error, but seed-paired readings mislead."""
    for env in sorted({r.env for r in runs}):
        seed_sets = {m: tuple(sorted(r.seed for r in runs if r.env == env and r.method == m))
                     for m in sorted({r.method for r in runs if r.env == env})}
        if len(set(seed_sets.values())) > 1:
            listed = "; ".join(f"{m}: {', '.join(map(str, seeds))}" for m, seeds in seed_sets.items())
            print(f"warning: on '{env}' the methods were run on different seed sets ({listed})", file=sys.stderr)


def load_runs(runs_dir: Path, final_fraction: float = 0.1, normalisation: str | None = None) -> list[Run]:
    """Every complete run (folder or record) under runs_dir; the skipped folders are listed on stderr."""
    dirs, skipped = find_run_dirs(runs_dir)
    print(f"reading {len(dirs)} run(s) under {runs_dir} ...", flush=True)
    runs = []
    for run_dir in dirs:
        try:
            runs.append(load_run(run_dir, final_fraction))
        except SkippedRun as reason:
            skipped.append(f"{run_dir}: {reason}")
    if skipped:
        print(f"warning: skipped {len(skipped)} folder(s) that are not complete runs:\n  " + "\n  ".join(skipped),
              file=sys.stderr)
    if not runs:
        raise SystemExit(f"error: no complete run under {runs_dir.resolve()} ({len(skipped)} skipped, listed above)")
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        key = (run.method, run.env, run.seed)
        if key in seen:
            raise SystemExit(f"error: two runs of method '{run.method}' on '{run.env}' with seed {run.seed}: "
                             f"{seen[key]} and {run.path}")
        seen[key] = run.path
    entries = normalisation_file(normalisation)
    for run in runs:
        run.r_random, run.r_max = normalisation_bounds(run.env, entries)
    warn_different_seed_sets(runs)
    return runs


def windowed_mean_returns(steps: np.ndarray, returns: np.ndarray, fractions: np.ndarray, window: float) -> np.ndarray:
    """Mean return of the episodes that ended in [(f - window) x L, f x L] for each fraction f, with L
    the last logged step; NaN where no episode ended in a window."""
    last = steps[-1]
    values = np.full(len(fractions), np.nan)
    for i, f in enumerate(fractions):
        in_window = (steps >= (f - window) * last) & (steps <= f * last)
        if in_window.any():
            values[i] = returns[in_window].mean()
    return values


def final_return(run: Run, fraction: float) -> float:
    return float(windowed_mean_returns(run.steps, run.returns, np.array([1.0]), fraction)[0])


def normalise(value, run: Run):
    return (value - run.r_random) / (run.r_max - run.r_random)


def ordered_methods(methods, baseline: str) -> list[str]:
    return sorted(set(methods), key=lambda m: (m != baseline, m))


def score_matrices(
    runs: list[Run], value: Callable[[Run], np.ndarray], what: str, baseline: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """{method: array (seeds, scenarios, ...)} of ``value(run)``, rows sorted by seed, and the scenarios.

    Every method must have the same number of seeds on every scenario (stratified bootstrap resamples
    seeds within each scenario; comparing methods on unequal seeds or scenarios would mislead).
    """
    methods = ordered_methods((r.method for r in runs), baseline)
    scenarios = sorted({r.env for r in runs})
    cells = {(m, s): sorted((r for r in runs if r.method == m and r.env == s), key=lambda r: r.seed)
             for m in methods for s in scenarios}
    (most_method, most_scenario), most = max(((k, len(v)) for k, v in cells.items()), key=lambda kv: kv[1])
    short = [f"'{m}' has {len(v)} on '{s}'" for (m, s), v in cells.items() if len(v) < most]
    if short:
        raise SystemExit(f"error: unequal seeds ({what}): every method needs as many seeds on every scenario as "
                         f"'{most_method}' has on '{most_scenario}' ({most}), but " + "; ".join(short)
                         + "; aggregate a part where they do with --scenarios / --methods")
    matrices = {m: np.stack([np.stack([value(r) for r in cells[m, s]]) for s in scenarios], axis=1) for m in methods}
    return matrices, scenarios


def score_aggregates(scores: np.ndarray) -> np.ndarray:
    """(reps, 4) IQM, mean, median, optimality gap of each (seeds, scenarios) sample of a (reps, seeds,
    scenarios) array; rliable's definitions (``metrics.aggregate_*``), one sample per row."""
    flat = scores.reshape(len(scores), -1)
    return np.stack([trim_mean(flat, 0.25, axis=1), flat.mean(axis=1), np.median(scores.mean(axis=1), axis=1),
                     1 - np.minimum(flat, 1).mean(axis=1)], axis=1)


def attention_aggregates(scores: np.ndarray) -> np.ndarray:
    return score_aggregates(scores)[:, :3]


def iqm_over_steps(scores: np.ndarray) -> np.ndarray:
    """(reps, steps) IQM over runs x scenarios at each step of a (reps, seeds, scenarios, steps) array."""
    return trim_mean(scores.reshape(scores.shape[0], -1, scores.shape[-1]), 0.25, axis=1)


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> np.ndarray:
    """(reps, 1) P(X > Y) per scenario, ties counting 1/2, averaged over scenarios, of (reps, seeds,
    scenarios) arrays: rliable's ``metrics.probability_of_improvement`` (Mann-Whitney U / (n_x n_y))."""
    x, y = scores_x[:, :, None, :], scores_y[:, None, :, :]
    per_scenario = np.mean(x > y, axis=(1, 2)) + 0.5 * np.mean(x == y, axis=(1, 2))
    return per_scenario.mean(axis=1, keepdims=True)


BOOTSTRAP_CHUNK = 2_000_000  # resampled values held in memory at once


def stratified_bootstrap(samples: list[np.ndarray], statistic: Callable, reps: int) -> np.ndarray:
    """(reps, k) ``statistic`` of ``reps`` stratified resamples of ``samples`` (arrays (seeds, scenarios, ...)).

    Vectorised form of rliable's ``StratifiedBootstrap`` (one sample) and ``StratifiedIndependentBootstrap``
    (a pair, resampled independently): a resample picks a seed independently for every cell of each array,
    drawn from numpy's global generator in rliable's order, so for a given ``np.random.seed`` the
    intervals are rliable's to the last digit.
    """
    shapes = [sample.shape for sample in samples]
    sizes = [int(np.prod(shape)) for shape in shapes]
    cells = [tuple(np.ogrid[tuple(slice(n) for n in shape[1:])]) for shape in shapes]
    if len({shape[0] for shape in shapes}) > 1:  # unequal seed counts: rliable's draws, one replication at a time
        return np.concatenate([statistic(*(sample[(np.random.randint(0, shape[0], size=(1, *shape)), *cell)]
                                           for sample, shape, cell in zip(samples, shapes, cells)))
                               for _ in range(reps)])
    values, chunk = [], max(1, BOOTSTRAP_CHUNK // sum(sizes))
    for start in range(0, reps, chunk):
        count = min(chunk, reps - start)
        rows = np.split(np.random.randint(0, shapes[0][0], size=(count, sum(sizes))), np.cumsum(sizes)[:-1], axis=1)
        values.append(statistic(*(sample[(row.reshape(count, *shape), *cell)]
                                  for sample, row, shape, cell in zip(samples, rows, shapes, cells))))
    return np.concatenate(values)


def interval_estimates(score_dict: dict, statistic: Callable, reps: int, seed: int, what: str) -> tuple[dict, dict]:
    """Point estimates and 95% percentile intervals of the stratified bootstrap, per method, reproducible
    for a seed: rliable's ``get_interval_estimates`` with the same draws, vectorised (``statistic`` takes
    arrays with a leading replication axis). A value is an array or a list of arrays (a pair)."""
    print(f"bootstrapping {what} ({reps} reps) ...", end=" ", flush=True)
    start = time.perf_counter()
    np.random.seed(seed)  # rliable draws its resamples from numpy's global generator
    points, intervals = {}, {}
    for method, value in score_dict.items():
        samples = [np.asarray(v, dtype=np.float64) for v in (value if isinstance(value, list) else [value])]
        points[method] = statistic(*(sample[None] for sample in samples))[0]
        intervals[method] = np.percentile(stratified_bootstrap(samples, statistic, reps), [2.5, 97.5], axis=0)
    print(f"{time.perf_counter() - start:.1f} s", flush=True)
    return points, intervals


def estimate_rows(quantity: str, names, points: dict, intervals: dict) -> list[dict]:
    rows = []
    for method, point in points.items():
        point = np.atleast_1d(point)
        low, high = np.asarray(intervals[method]).reshape(2, -1)
        for i, name in enumerate(names):
            rows.append(dict(quantity=quantity, metric=name, method=method, point=float(point[i]),
                             ci_low=float(low[i]), ci_high=float(high[i])))
    return rows


def plot_score_intervals(path: Path, points: dict, intervals: dict, names, title: str, colors: dict) -> None:
    """rliable's interval-estimate panels: per metric, a bar for each method's CI and a tick at its point."""
    fig, _ = plot_utils.plot_interval_estimates(points, intervals, list(names), colors=colors,
                                                xlabel="normalised score", xlabel_y_coordinate=-0.25,
                                                row_height=max(0.6, 0.45 * len(points)))
    fig.suptitle(title, y=1.25, fontsize="x-large")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_intervals(path: Path, points: dict, intervals: dict, names, title: str, xlabel: str, colors: dict,
                   columns: int = 4) -> None:
    """One panel per metric, ``columns`` to a row: a bar for each method's CI, a black tick at its point.

    Drawn by hand for the attention metrics: rliable's plot_interval_estimates puts every metric in one
    row (a dozen attention metrics would not fit) and needs every method to have every metric.
    """
    methods = list(points)
    columns = min(columns, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, rows * (0.9 + 0.45 * len(methods)) + 0.4),
                             squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for i, (ax, name) in enumerate(zip(axes.flat, names)):
        for j, method in enumerate(methods):
            low, high = intervals[method][:, i]
            ax.barh(j, high - low, left=low, height=0.6, color=colors[method], alpha=0.7)
            ax.vlines(points[method][i], j - 0.3, j + 0.3, color="k")
        ax.set_yticks(range(len(methods)), methods if i % columns == 0 else [""] * len(methods))
        ax.set_ylim(len(methods) - 0.4, -0.6)  # first method on top
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(
    path: Path, x: np.ndarray, points: dict, intervals: dict, xlabel: str, title: str, colors: dict
) -> None:
    """rliable's sample-efficiency curves: IQM at each point, its 95% CI shaded."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_sample_efficiency_curve(x, points, intervals, colors=colors, xlabel=xlabel,
                                            ylabel="IQM normalised return", ax=ax, labelsize="large",
                                            ticklabelsize="medium", marker="o", linewidth=1.5)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_probability_of_improvement(path: Path, points: dict, intervals: dict, baseline: str, colors: dict) -> None:
    """rliable's probability-of-improvement bars: P(method > baseline), point and 95% CI."""
    fig, ax = plt.subplots(figsize=(6.5, 1.6 + 0.5 * len(points)))
    plot_utils.plot_probability_of_improvement(
        {f"{m},{baseline}": float(np.ravel(p)[0]) for m, p in points.items()},
        {f"{m},{baseline}": np.ravel(intervals[m]) for m in points}, ax=ax,
        colors=[colors[m] for m in points], xticks=[0.0, 0.25, 0.5, 0.75, 1.0], xlabel="P(X > Y)",
        left_ylabel="X", right_ylabel="Y", labelsize="large", ticklabelsize="medium")
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_title(f"Probability of improvement over {baseline} (normalised final score, 95% CI)", pad=18)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def aggregate_final_scores(runs: list[Run], args: Args, out: Path, colors: dict) -> list[dict]:
    """Per-run final returns, their aggregates with CIs, probability of improvement; figures."""
    rows = []
    for run in runs:
        value = final_return(run, args.final_fraction)
        for quantity, point in (("final_return", value), ("normalised_score", normalise(value, run))):
            rows.append(dict(quantity=quantity, metric="run", method=run.method, scenario=run.env, seed=run.seed,
                             point=point))
    scores, scenarios = score_matrices(runs, lambda r: normalise(final_return(r, args.final_fraction), r),
                                       "final scores", args.baseline)
    seeds = next(iter(scores.values())).shape[0]
    print(f"{len(scores)} method(s) x {len(scenarios)} scenario(s) ({', '.join(map(short_name, scenarios))}) x {seeds} seed(s)")
    points, intervals = interval_estimates(scores, score_aggregates, args.reps, args.seed,
                                           "IQM, mean, median, optimality gap of the normalised final scores")
    rows += estimate_rows("normalised_score", SCORE_AGGREGATES, points, intervals)
    plot_score_intervals(out / "interval_estimates.png", points, intervals, SCORE_AGGREGATES,
                         f"Normalised final score: point and 95% stratified-bootstrap CI "
                         f"({len(scenarios)} scenarios x {seeds} seeds)", colors)

    if args.baseline not in scores or len(scores) < 2:
        print(f"no probability of improvement: it needs method '{args.baseline}' (--baseline) and another")
        return rows
    pairs = {m: [scores[m], scores[args.baseline]] for m in scores if m != args.baseline}
    points, intervals = interval_estimates(pairs, probability_of_improvement, args.reps, args.seed,
                                           f"probability of improvement over '{args.baseline}'")
    rows += estimate_rows("normalised_score", [f"probability_of_improvement_over_{args.baseline}"], points, intervals)
    plot_probability_of_improvement(out / "probability_of_improvement.png", points, intervals, args.baseline, colors)
    return rows


def aggregate_curves(runs: list[Run], args: Args, out: Path, colors: dict) -> list[dict]:
    """IQM of the normalised running-mean return at evenly spaced fractions of training, with CIs."""
    fractions = np.arange(1, args.curve_points + 1) / args.curve_points
    curves, scenarios = score_matrices(
        runs, lambda r: normalise(windowed_mean_returns(r.steps, r.returns, fractions, args.final_fraction), r),
        "sample-efficiency curves", args.baseline)
    complete = ~np.any([np.isnan(c).any(axis=(0, 1)) for c in curves.values()], axis=0)
    if not complete.any():
        print("no sample-efficiency curves: no point where every run had finished an episode")
        return []
    if not complete.all():
        print(f"sample-efficiency curves: dropping {np.sum(~complete)} early point(s) where a run had no episode yet")
    totals = {r.total_timesteps for r in runs}
    if len(totals) == 1:
        x, xlabel = fractions[complete] * totals.pop(), "environment steps"
    else:
        x, xlabel = fractions[complete] * 100, "% of training (runs have different total_timesteps)"
    points, intervals = interval_estimates({m: c[:, :, complete] for m, c in curves.items()}, iqm_over_steps,
                                           args.reps, args.seed, f"IQM sample-efficiency curves at {len(x)} points")
    rows = [dict(quantity="normalised_score_curve", metric="IQM", method=m, step=float(step), point=float(points[m][i]),
                 ci_low=float(intervals[m][0, i]), ci_high=float(intervals[m][1, i]))
            for m in points for i, step in enumerate(x)]
    seeds = next(iter(curves.values())).shape[0]
    plot_curves(out / "sample_efficiency.png", x, points, intervals, xlabel,
                f"Sample efficiency: IQM over {len(scenarios)} scenarios x {seeds} seeds, 95% CIs\n"
                f"(return: mean of the episodes ending in the preceding {args.final_fraction:.0%} of steps)", colors)
    return rows


def aggregate_evaluation(runs: list[Run], names: list[str], args: Args, path: Path, title: str,
                         colors: dict) -> list[dict]:
    """Per-run metrics of attention_eval.json / shift_eval.json, aggregated like the scores (not normalised)."""
    rows, iqm_points, iqm_intervals = [], {}, {}
    for name in names:
        evaluated = [r for r in runs if name in r.evaluation]
        rows += [dict(quantity=name, metric="run", method=r.method, scenario=r.env, seed=r.seed,
                      point=r.evaluation[name]) for r in evaluated]
        matrices, _ = score_matrices(evaluated, lambda r: np.float64(r.evaluation[name]),
                                     f"evaluation metric '{name}'", args.baseline)
        points, intervals = interval_estimates(matrices, attention_aggregates, args.reps, args.seed,
                                               f"IQM, mean, median of '{name}'")
        rows += estimate_rows(name, ATTENTION_AGGREGATES, points, intervals)
        iqm_points[name] = {m: p[0] for m, p in points.items()}
        iqm_intervals[name] = {m: i[:, 0] for m, i in intervals.items()}
    if names:
        methods = [m for m in colors if any(m in p for p in iqm_points.values())]
        nan2 = np.full(2, np.nan)  # a method without this metric: no bar
        plot_intervals(path,
                       {m: [iqm_points[n].get(m, np.nan) for n in names] for m in methods},
                       {m: np.array([iqm_intervals[n].get(m, nan2) for n in names]).T for m in methods}, names,
                       title, "IQM", colors,
                       columns=2)  # names are sorted: each metric sits beside its chance / random-order control
    return rows


def aggregate_attention(runs: list[Run], args: Args, out: Path, colors: dict) -> list[dict]:
    """Attention metrics in attention.png; occlusion and background-shift metrics in evidence.png."""
    names = sorted({name for r in runs for name in r.evaluation})
    evidence = [n for n in names if n.startswith(EVIDENCE_PREFIXES)]
    attention = [n for n in names if n not in evidence]
    return (aggregate_evaluation(runs, attention, args, out / "attention.png",
                                 "Attention metrics: IQM over scenarios x seeds, point and 95% CI", colors)
            + aggregate_evaluation(runs, evidence, args, out / "evidence.png",
                                   "Occlusion and background shift: IQM over scenarios x seeds, point and 95% CI",
                                   colors))


def welch_p_value(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) of mean(x) = mean(y); NaN with < 2 values a side.

    Two samples without spread: 1 if they are equal, 0 if not (the test's limit as the spread goes to 0).
    """
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return 1.0 if x[0] == y[0] else 0.0
    return float(ttest_ind(x, y, equal_var=False).pvalue)


def significance_tests(runs: list[Run], args: Args) -> list[dict]:
    """Welch's t-test over seeds of --reference against every other method, per scenario and metric
    (the final return and each evaluation metric)."""
    if args.reference not in {r.method for r in runs}:
        print(f"no significance tests: no run of method '{args.reference}' (--reference)")
        return []
    values = {"final_return": lambda r: final_return(r, args.final_fraction)}
    for name in sorted({name for r in runs for name in r.evaluation}) if args.attention else []:
        values[name] = lambda r, name=name: r.evaluation.get(name, np.nan)
    rows = []
    for quantity, value in values.items():
        for env in sorted({r.env for r in runs}):
            def sample(method):
                found = [value(r) for r in runs if r.env == env and r.method == method]
                return np.array([v for v in found if np.isfinite(v)])

            reference = sample(args.reference)
            for method in ordered_methods((r.method for r in runs), args.baseline):
                other = sample(method)
                if method == args.reference or not len(other):
                    continue
                rows.append(dict(quantity=quantity, metric=f"welch_p_{args.reference}_vs", method=method, scenario=env,
                                 point=welch_p_value(reference, other), n=f"{len(reference)} vs {len(other)}"))
    return rows


def plot_p_values(path: Path, rows: list[dict], reference: str) -> None:
    """One panel per compared method: p-value of each metric (rows) on each scenario (columns)."""
    table = pd.DataFrame(rows)
    methods, scenarios = list(table.method.unique()), sorted(table.scenario.unique())
    quantities = list(table.quantity.unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(1.6 + 1.5 * len(scenarios) * len(methods),
                                                       1.2 + 0.35 * len(quantities)), squeeze=False)
    for i, (ax, method) in enumerate(zip(axes.flat, methods)):
        part = table[table.method == method].pivot(index="quantity", columns="scenario", values="point")
        part = part.reindex(index=quantities, columns=scenarios)
        ax.imshow(-np.log10(part.to_numpy(float).clip(1e-6, 1)), cmap="viridis", vmin=0, vmax=3, aspect="auto")
        for (r, c), p in np.ndenumerate(part.to_numpy(float)):
            ax.text(c, r, "n/a" if np.isnan(p) else f"{p:.3f}", ha="center", va="center", fontsize=7,
                    color="w" if np.isnan(p) or p > 0.01 else "k")
        ax.set_xticks(range(len(scenarios)), scenarios, rotation=20, fontsize=8)
        ax.set_yticks(range(len(quantities)), quantities if i == 0 else [""] * len(quantities), fontsize=8)
        ax.set_title(f"{reference} vs {method}", fontsize=9)
    fig.suptitle("Welch's t-test over seeds, two-sided p-value (colour: -log10 p, bright = small p)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_tables(rows: list[dict]) -> None:
    table = pd.DataFrame([r for r in rows if "ci_low" in r and r["quantity"] != "normalised_score_curve"])
    table["cell"] = [f"{p:.3f} [{lo:.3f}, {hi:.3f}]" for p, lo, hi in zip(table.point, table.ci_low, table.ci_high)]
    for quantity, part in table.groupby("quantity", sort=False):
        is_improvement = part.metric.str.startswith("probability_of_improvement")
        for cells, title in ((part[~is_improvement], ""), (part[is_improvement], ", probability of improvement")):
            if len(cells):
                print(f"\n{quantity}{title}, point [95% CI]:")
                table_ = cells.pivot(index="method", columns="metric", values="cell")
                print(table_.reindex(index=cells.method.unique(), columns=cells.metric.unique()).to_string())


def print_p_values(rows: list[dict], reference: str) -> None:
    table = pd.DataFrame(rows)
    table["cell"] = [f"{'n/a' if np.isnan(p) else f'{p:.3g}'} ({n})" for p, n in zip(table.point, table.n)]
    print(f"\nWelch's t-test over seeds, {reference} vs each method: two-sided p-value (n seeds {reference} vs other):")
    pivot = table.pivot(index=["quantity", "scenario"], columns="method", values="cell")
    print(pivot.reindex(columns=table.method.unique()).to_string())


def check_output_folder(out: Path, flag: str = "--out") -> None:
    """Refuse before reading anything: an output folder must exist or be creatable, and be writable."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: {flag} {out} is an existing file; give a folder (created if missing)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(f"error: {flag} {out}: cannot write into {existing}; give a writable folder")


def main(args: Args) -> None:
    if not 0 < args.final_fraction <= 1:
        raise SystemExit(f"error: --final-fraction must be in (0, 1], got {args.final_fraction}")
    if args.reps < 1 or args.curve_points < 1:
        raise SystemExit(f"error: --reps and --curve-points must be >= 1, got {args.reps} and {args.curve_points}")
    out = Path(args.out)
    check_output_folder(out)
    try:
        runs = selection.select_runs(load_runs(Path(args.runs_dir), args.final_fraction, args.normalisation),
                                     args.scenarios, args.methods, args.seeds, owner=args.runs_dir)
    except ValueError as error:
        sys.exit(f"error: {error}")
    out.mkdir(parents=True, exist_ok=True)
    methods = ordered_methods((r.method for r in runs), args.baseline)
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    bounds = {r.env: (r.r_random, r.r_max) for r in runs}
    rows = [dict(quantity="normaliser", metric=name, scenario=env, point=value)
            for env in sorted(bounds) for name, value in zip(("R_random", "R_max"), bounds[env])]
    rows += aggregate_final_scores(runs, args, out, colors)
    rows += aggregate_curves(runs, args, out, colors)
    if args.attention:
        rows += aggregate_attention(runs, args, out, colors)
    tests = significance_tests(runs, args)
    if tests:
        plot_p_values(out / "p_values.png", tests, args.reference)
    csv_path = out / "aggregate.csv"
    pd.DataFrame(rows + tests, columns=["quantity", "metric", "method", "scenario", "seed", "step", "point", "ci_low",
                                        "ci_high", "n"]).to_csv(csv_path, index=False)
    print_tables(rows)
    if tests:
        print_p_values(tests, args.reference)
    print(f"\nwrote {csv_path} and the figures in {out}/")


if __name__ == "__main__":
    main(tyro.cli(Args))
