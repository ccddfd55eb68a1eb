"""Reading a study: run folders and run records, their returns and evaluations, and their scores.

A run is any folder holding a ``config.json`` (keys ``env``, ``method``, ``seed``, ``total_timesteps``) and
TensorBoard event files with the scalar ``charts/episodic_return`` (the true episodic return, logged at the
global step at which each episode ended), or a run record of eval/record.py (``returns.csv`` instead of
the event files); ``attention_eval.json`` and ``shift_eval.json`` add its evaluation metrics. The file
names are agents/run_folder.py's.

A classifier run (agents/camal_classifier.py: a ``config.json`` with ``model``, ``method``, ``seed``, ``epochs`` and
no ``env``) or its record holds ``curves.csv`` (one row per epoch) and ``classifier_eval.json`` (eval/classifier.py).
It is read into a Run of paradigm CLASSIFIER with the architecture (config ``model``) in the scenario's role
(``Run.env``), its epochs as its budget (``Run.total_timesteps``), no episodes, and its evaluation flattened to
``SPLIT_metric`` keys, the naming of curves.csv: ``val_accuracy``, ``test_balanced_relevance_mass``,
``test_shifted_deletion_auc``, ... (the image counts ``images``, ``images_with_mask`` and ``images_zero_map`` are
not metrics and are left out). It is complete when curves.csv has reached the config's epochs and
classifier_eval.json exists. A study is one paradigm: a folder holding RL runs and classifier runs is refused.

Bad input raises InputError, whose message names what was wrong and what is valid; what is only worth
knowing (folders left out, methods on different seeds) goes to ``warn``, by default ``warnings.warn``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from agents.run_folder import ATTENTION_EVAL, CLASSIFIER_EVAL, CONFIG, CURVES, RETURNS, SHIFT_EVAL, read_curves
from eval.stats import windowed_mean_returns
from scenarios import SCENARIOS, is_config_path

RETURN_TAG = "charts/episodic_return"
EVALUATION_FILES = (ATTENTION_EVAL, SHIFT_EVAL)
CONFIG_KEYS = ("env", "method", "seed", "total_timesteps")
RL, CLASSIFIER = "rl", "classifier"
"""the two paradigms of a study: RL agents (agents/ppo_camal.py) and image classifiers (agents/camal_classifier.py)"""
CLASSIFIER_CONFIG_KEYS = ("model", "method", "seed", "epochs")
CLASSIFIER_EVALUATION_FILES = (CLASSIFIER_EVAL,)
CLASSIFIER_COUNTS = ("images", "images_with_mask", "images_zero_map")
"""per-split counts of classifier_eval.json: not metrics, left out of a run's evaluation"""


class InputError(Exception):
    """Input that cannot be used as asked (runs, files, a selection): the message says what was wrong and what
    is valid. The command lines turn it into a one-line `error: ...` and exit 1."""


class RunWarning(UserWarning):
    """Something about the runs worth knowing that does not stop the aggregation."""


class SkippedRun(Exception):
    """A folder that is not a complete run (refused, crashed or unfinished): listed in a warning, left out."""


class NotEvaluated(SkippedRun):
    """A classifier run that finished training but has no classifier_eval.json yet."""


def warn_by_default(message: str) -> None:
    warnings.warn(message, RunWarning, stacklevel=3)


@dataclass
class Run:
    path: Path
    env: str
    """the scenario; for a classifier run, the architecture (config ``model``)"""
    method: str
    seed: int
    total_timesteps: int
    """the budget: environment steps; for a classifier run, epochs"""
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
    paradigm: str = RL
    """RL or CLASSIFIER"""
    splits: tuple[str, ...] = ()
    """a classifier run's evaluated splits, in classifier_eval.json's order"""
    undefined: frozenset[str] = frozenset()
    """metrics its evaluation files hold as NaN (e.g. alignment where every map is all zero), left out of
    ``evaluation``"""


def paradigm_of(config: dict) -> str:
    """CLASSIFIER for a config of agents/camal_classifier.py (a ``model``, no ``env``), else RL."""
    return CLASSIFIER if isinstance(config, dict) and "env" not in config and "model" in config else RL


def evaluation_files(paradigm: str) -> tuple[str, ...]:
    """The evaluation files of a run of the paradigm, as its record holds them."""
    return CLASSIFIER_EVALUATION_FILES if paradigm == CLASSIFIER else EVALUATION_FILES


def find_run_dirs(runs_dir: Path) -> tuple[list[Path], list[str]]:
    """Folders holding a config.json (runs and run records), and the folders with TensorBoard events but
    no config.json (described as skipped)."""
    if not runs_dir.is_dir():
        raise InputError(f"no runs found: {runs_dir.resolve()} is not a folder")
    dirs = sorted(p.parent for p in runs_dir.rglob(CONFIG))
    orphans = sorted({p.parent for p in runs_dir.rglob("events.out.tfevents.*")} - set(dirs))
    if not dirs:
        raise InputError(f"no runs found: no folder under {runs_dir.resolve()} holds a {CONFIG}")
    return dirs, [f"{d}: TensorBoard events but no {CONFIG}" for d in orphans]


def read_episodic_returns(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, returns) of every episode: a record's returns.csv, else every ``charts/episodic_return``
    scalar in the folder's event files."""
    if (run_dir / RETURNS).is_file():
        try:
            table = pd.read_csv(run_dir / RETURNS)
            return table["step"].to_numpy(np.int64), table["return"].to_numpy(np.float64)
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as error:
            raise InputError(f"cannot read {run_dir / RETURNS} (columns step, return): {error!r}")
    accumulator = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})  # 0: keep every scalar
    accumulator.Reload()
    if RETURN_TAG not in accumulator.Tags()["scalars"]:
        return np.zeros(0, np.int64), np.zeros(0)
    events = sorted(accumulator.Scalars(RETURN_TAG), key=lambda e: e.step)
    return np.array([e.step for e in events], np.int64), np.array([e.value for e in events], np.float64)


def split_finite(values: dict[str, float], path: Path, warn: Callable[[str], None]
                 ) -> tuple[dict[str, float], frozenset[str]]:
    """The finite values, and the names of the others (NaN or inf: e.g. no frame with a target, or only all-zero
    maps), of which ``warn`` is told: such a run has no value of them to aggregate."""
    finite = {k: v for k, v in values.items() if np.isfinite(v)}
    undefined = sorted(values.keys() - finite.keys())
    if undefined:
        warn(f"{path} has no value for {', '.join(undefined)}; left out")
    return finite, frozenset(undefined)


def read_evaluation(path: Path, warn: Callable[[str], None] = warn_by_default
                    ) -> tuple[dict[str, float], frozenset[str]]:
    """The finite per-run means (key ``"means"``) of an attention_eval.json or shift_eval.json, and the names of
    those that are not finite."""
    try:
        means = json.loads(path.read_text())["means"]
        values = {k: float(v) for k, v in means.items() if v is not None}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise InputError(f"cannot read the per-run means ('means') of {path}: {error!r}")
    # NaN (or null): e.g. no frame with a target, or only all-zero maps; such a run has no value to aggregate
    return split_finite(values, path, warn)


def read_classifier_evaluation(path: Path, warn: Callable[[str], None] = warn_by_default
                               ) -> tuple[dict[str, float], frozenset[str], tuple[str, ...], dict]:
    """The finite metrics of a classifier_eval.json as ``SPLIT_metric`` keys, the names of those that are not
    finite, its splits, and the run it names (its keys model, method and seed that it has)."""
    try:
        evaluated = json.loads(path.read_text())
        splits = evaluated["splits"]
        values = {f"{split}_{name}": float(value) for split, metrics in splits.items()
                  for name, value in metrics.items() if name not in CLASSIFIER_COUNTS and value is not None}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise InputError(f"cannot read the per-split metrics ('splits': {{SPLIT: {{metric: value}}}}) of {path}: "
                         f"{error!r}")
    finite, undefined = split_finite(values, path, warn)
    named = {key: evaluated[key] for key in ("model", "method", "seed") if key in evaluated}
    return finite, undefined, tuple(splits), named


def classifier_epochs_done(run_dir: Path) -> int:
    """The epochs a classifier run's curves.csv holds (0 without one)."""
    try:
        curves = read_curves(run_dir)
        return int(curves[-1]["epoch"]) if curves else 0
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"cannot read {run_dir / CURVES} (one row per epoch, column epoch): {error!r}")


def load_classifier_run(run_dir: Path, config: dict, warn: Callable[[str], None] = warn_by_default,
                        unfinished: bool = False) -> Run:
    """A classifier run folder or record; SkippedRun if its curves.csv has fewer epochs than its config,
    NotEvaluated if it has no classifier_eval.json (``unfinished``: neither is required)."""
    missing = [key for key in CLASSIFIER_CONFIG_KEYS if key not in config]
    if missing:
        raise SkippedRun(f"{CONFIG} of a classifier run lacks the key(s) {', '.join(missing)}")
    epochs, done = int(config["epochs"]), classifier_epochs_done(run_dir)
    if done == 0:
        raise SkippedRun(f"no epoch in {CURVES} (a refused, crashed or just started run)")
    if done < epochs and not unfinished:
        raise SkippedRun(f"unfinished: {done} of {epochs} epochs in {CURVES}")
    evaluation, undefined, splits = {}, frozenset(), ()
    if (run_dir / CLASSIFIER_EVAL).is_file():
        evaluation, undefined, splits, named = read_classifier_evaluation(run_dir / CLASSIFIER_EVAL, warn)
        different = [key for key, value in named.items() if value != config[key]]
        if different:
            raise InputError(f"{run_dir / CLASSIFIER_EVAL} is not this run's: its "
                             + ", ".join(f"{k} {named[k]!r} is not {CONFIG}'s {config[k]!r}" for k in different)
                             + f"; evaluate the run again (python eval/classifier.py {run_dir})")
    elif not unfinished:
        raise NotEvaluated(f"not evaluated: no {CLASSIFIER_EVAL} (python eval/classifier.py {run_dir})")
    return Run(run_dir, str(config["model"]), str(config["method"]), int(config["seed"]), epochs,
               np.zeros(0, np.int64), np.zeros(0), evaluation, paradigm=CLASSIFIER, splits=splits,
               undefined=undefined)


def read_run_config(run_dir: Path) -> dict:
    """A run's config.json; SkippedRun if it is unreadable."""
    try:
        return json.loads((run_dir / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SkippedRun(f"unreadable {CONFIG} ({error})")


def load_run(run_dir: Path, final_fraction: float = 0.1, warn: Callable[[str], None] = warn_by_default,
             unfinished: bool = False) -> Run:
    """A run folder or run record, RL or classifier; SkippedRun if it is not a complete run (``unfinished``: a
    classifier run still training, or not evaluated, is read too; an RL one is with ``final_fraction`` 1)."""
    config = read_run_config(run_dir)
    if paradigm_of(config) == CLASSIFIER:
        return load_classifier_run(run_dir, config, warn, unfinished)
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise SkippedRun(f"{CONFIG} lacks the key(s) {', '.join(missing)}")
    steps, returns = read_episodic_returns(run_dir)
    if len(returns) == 0:
        raise SkippedRun(f"no '{RETURN_TAG}' scalars (a refused, crashed or just started run)")
    if steps[-1] < (1 - final_fraction) * int(config["total_timesteps"]):
        raise SkippedRun(f"unfinished: episodes logged up to step {steps[-1]} of {config['total_timesteps']}")
    evaluation, undefined = {}, frozenset()
    for name in EVALUATION_FILES:
        if (run_dir / name).exists():
            finite, not_finite = read_evaluation(run_dir / name, warn)
            evaluation.update(finite)
            undefined |= not_finite
    return Run(run_dir, str(config["env"]), str(config["method"]), int(config["seed"]),
               int(config["total_timesteps"]), steps, returns, evaluation, undefined=undefined)


def normalisation_file(path: str | None) -> dict[str, dict]:
    """{scenario: {"r_random": ..., "r_max": ...}} of a file from eval/random_baseline.py --out."""
    if path is None:
        return {}
    try:
        entries = json.loads(Path(path).read_text())
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            raise ValueError("expected {scenario: {\"r_random\": R, \"r_max\": R}}")
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read --normalisation {path}: {error}")
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
        raise InputError(f"scenario {env} has no {missing}, so its scores cannot be normalised: run "
                        f"`python eval/random_baseline.py --env {env} --episodes 2000 --r-max R_MAX --out "
                        f"normalisation.json` and pass --normalisation normalisation.json")
    return float(r_random), float(r_max)


def different_seed_sets(runs: list[Run]) -> list[str]:
    """The scenarios whose methods ran on different seeds: not an error, but seed-paired readings mislead."""
    found = []
    for env in sorted({r.env for r in runs}):
        seed_sets = {m: tuple(sorted(r.seed for r in runs if r.env == env and r.method == m))
                     for m in sorted({r.method for r in runs if r.env == env})}
        if len(set(seed_sets.values())) > 1:
            listed = "; ".join(f"{m}: {', '.join(map(str, seeds))}" for m, seeds in seed_sets.items())
            found.append(f"on '{env}' the methods were run on different seed sets ({listed})")
    return found


def load_runs(runs_dir: Path, final_fraction: float = 0.1, normalisation: str | None = None,
              warn: Callable[[str], None] = warn_by_default) -> list[Run]:
    """Every complete run (folder or record) under runs_dir, with its scenario's normalisation constants; the
    folders left out and the scenarios whose methods ran on different seeds go to ``warn``."""
    dirs, skipped = find_run_dirs(runs_dir)
    check_one_paradigm(dirs, runs_dir)
    runs = []
    for run_dir in dirs:
        try:
            runs.append(load_run(run_dir, final_fraction, warn))
        except SkippedRun as reason:
            skipped.append(f"{run_dir}: {reason}")
    if skipped:
        warn(f"skipped {len(skipped)} folder(s) that are not complete runs:\n  " + "\n  ".join(skipped))
    if not runs:
        raise InputError(f"no complete run under {runs_dir.resolve()} ({len(skipped)} skipped, listed above)")
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        key = (run.method, run.env, run.seed)
        if key in seen:
            raise InputError(f"two runs of method '{run.method}' on '{run.env}' with seed {run.seed}: "
                            f"{seen[key]} and {run.path}")
        seen[key] = run.path
    entries = normalisation_file(normalisation)
    for run in runs:
        if run.paradigm == RL:  # a classifier's metrics are not normalised
            run.r_random, run.r_max = normalisation_bounds(run.env, entries)
    for message in different_seed_sets(runs):
        warn(message)
    return runs


def check_one_paradigm(dirs: list[Path], runs_dir: Path) -> str:
    """The paradigm of the runs in ``dirs`` (their readable configs); InputError naming one run of each if they
    mix RL runs and classifier runs."""
    found: dict[str, Path] = {}
    for run_dir in dirs:
        try:
            found.setdefault(paradigm_of(read_run_config(run_dir)), run_dir)
        except SkippedRun:
            continue
    if len(found) > 1:
        raise InputError(f"{runs_dir} mixes RL runs (e.g. {found[RL]}) and classifier runs (e.g. {found[CLASSIFIER]}); "
                         "a study is one paradigm: put each kind in a folder of its own")
    return next(iter(found), RL)


def study_paradigm(runs_dir: Path) -> str:
    """RL or CLASSIFIER: the paradigm of the runs under runs_dir, from their configs alone; InputError if there
    are none or they mix the two."""
    dirs, _ = find_run_dirs(runs_dir)
    return check_one_paradigm(dirs, runs_dir)


def final_return(run: Run, fraction: float) -> float:
    """The mean true return of the episodes that ended in the last ``fraction`` of the run's logged steps."""
    return float(windowed_mean_returns(run.steps, run.returns, np.array([1.0]), fraction)[0])


def normalise(value, run: Run):
    """(R - R_random) / (R_max - R_random) with the constants of the run's scenario."""
    return (value - run.r_random) / (run.r_max - run.r_random)


def ordered_methods(methods, baseline: str) -> list[str]:
    """The baseline first, then the others alphabetically."""
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
        raise InputError(f"unequal seeds ({what}): every method needs as many seeds on every scenario as "
                        f"'{most_method}' has on '{most_scenario}' ({most}), but " + "; ".join(short)
                        + "; aggregate a part where they do with --scenarios / --methods")
    matrices = {m: np.stack([np.stack([value(r) for r in cells[m, s]]) for s in scenarios], axis=1) for m in methods}
    return matrices, scenarios


def check_output_folder(out: Path, flag: str = "--out") -> None:
    """Refuse before reading anything: an output folder must exist or be creatable, and be writable."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out} is an existing file; give a folder (created if missing)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out}: cannot write into {existing}; give a writable folder")
