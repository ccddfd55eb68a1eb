"""A set of runs aggregated into rows of aggregate.csv's long format (columns ``COLUMNS``), with rliable's
statistics (eval/stats.py); eval/plots.py draws its figures from these rows.

- Final score of a run: the mean true return of the episodes that ended in the last ``final_fraction``
  of the run's logged steps, normalised per scenario, ``(R - R_random) / (R_max - R_random)``.
- IQM, mean, median and optimality gap over scenarios x seeds with stratified-bootstrap 95% CIs, per
  method; the probability of improvement of every method over the baseline (P(X > Y) per scenario,
  ties 1/2, averaged over scenarios) with CIs from the stratified independent bootstrap.
- Sample-efficiency curves: at evenly spaced fractions f of each run's logged steps, the mean return of
  the episodes that ended in [(f - final_fraction) x L, f x L], normalised, then IQM with CIs over runs.
- Evaluation metrics (attention_eval.json, shift_eval.json): IQM, mean, median with CIs, not normalised.
- Welch's t-test over seeds of the reference against every other method, per scenario and metric.

Classifier runs (eval/runs.py, paradigm CLASSIFIER; the architecture in the scenario's role) have no returns, so
no scores, curves or probability of improvement: every evaluation metric (``SPLIT_metric``) gets its IQM with a
95% bootstrap CI over seeds per architecture (``scenario`` the architecture) and IQM, mean, median with stratified
CIs over architectures x seeds (no ``scenario``); the tests of the reference against every other method: Welch's
and the paired t-test over seeds (``n`` the pairs: same seed, same initialisation and data order) per
architecture, and the stratified permutation test across architectures (eval/tables.py's).

Every bootstrap draws from a ``RandomState(seed)`` of its own, so each estimate is reproducible alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eval import stats
from eval.runs import CLASSIFIER, RL, Run, final_return, normalise, ordered_methods, score_matrices
from scenarios import short_name

COLUMNS = ["quantity", "metric", "method", "scenario", "seed", "step", "point", "ci_low", "ci_high", "n"]
SCORE_AGGREGATES = ("IQM", "mean", "median", "optimality gap")
EVALUATION_AGGREGATES = ("IQM", "mean", "median")
CURVE = "normalised_score_curve"
EVIDENCE_PREFIXES = ("occlusion_", "shift_")
"""evaluation metrics of the evidence figure (occlusion, background shift); the others are attention metrics"""


@dataclass
class Options:
    final_fraction: float = 0.1
    """final score = mean return of the episodes that ended in this last fraction of a run's logged steps"""
    reps: int = 50000
    """bootstrap replications of each interval estimate"""
    curve_points: int = 20
    """number of evenly spaced points of the sample-efficiency curves"""
    baseline: str = "vanilla"
    """method that the others are compared with by probability of improvement"""
    reference: str = "camal"
    """method tested against every other method (Welch's t-test over seeds, per scenario and metric)"""
    seed: int = 0
    """seed of the random state each bootstrap draws its resamples from"""
    attention: bool = True
    """also aggregate the metrics of attention_eval.json and shift_eval.json files"""


@dataclass
class Aggregate:
    rows: list[dict]
    """aggregate.csv's rows but the tests: normalisers, per-run scores, estimates, curves, evaluation metrics"""
    tests: list[dict]
    """Welch's t-tests of the reference against each other method (aggregate.csv's last rows)"""
    scenarios: list[str]
    seeds: int
    """seeds per method and scenario"""
    curve_xlabel: str = "environment steps"
    notes: list[str] = field(default_factory=list)
    """what was left out and why (e.g. no probability of improvement without the baseline)"""
    paradigm: str = RL
    """the runs' paradigm (eval/runs.py): RL or CLASSIFIER"""
    splits: list[str] = field(default_factory=list)
    """a classifier study's evaluated splits"""


def estimate_rows(quantity: str, names, points: dict, intervals: dict) -> list[dict]:
    rows = []
    for method, point in points.items():
        point = np.atleast_1d(point)
        low, high = np.asarray(intervals[method]).reshape(2, -1)
        for i, name in enumerate(names):
            rows.append(dict(quantity=quantity, metric=name, method=method, point=float(point[i]),
                             ci_low=float(low[i]), ci_high=float(high[i])))
    return rows


def normaliser_rows(runs: list[Run]) -> list[dict]:
    bounds = {r.env: (r.r_random, r.r_max) for r in runs}
    return [dict(quantity="normaliser", metric=name, scenario=env, point=value)
            for env in sorted(bounds) for name, value in zip(("R_random", "R_max"), bounds[env])]


def final_score_rows(runs: list[Run], options: Options, notes: list[str]) -> list[dict]:
    """Per-run final returns and normalised scores, their aggregates with CIs, probability of improvement."""
    rows = []
    for run in runs:
        value = final_return(run, options.final_fraction)
        for quantity, point in (("final_return", value), ("normalised_score", normalise(value, run))):
            rows.append(dict(quantity=quantity, metric="run", method=run.method, scenario=run.env, seed=run.seed,
                             point=point))
    scores, _ = score_matrices(runs, lambda r: normalise(final_return(r, options.final_fraction), r), "final scores",
                               options.baseline)
    points, intervals = stats.interval_estimates(scores, stats.score_aggregates, options.reps,
                                                 np.random.RandomState(options.seed))
    rows += estimate_rows("normalised_score", SCORE_AGGREGATES, points, intervals)
    if options.baseline not in scores or len(scores) < 2:
        notes.append(f"no probability of improvement: it needs method '{options.baseline}' (--baseline) and another")
        return rows
    pairs = {m: [scores[m], scores[options.baseline]] for m in scores if m != options.baseline}
    points, intervals = stats.interval_estimates(pairs, stats.probability_of_improvement, options.reps,
                                                 np.random.RandomState(options.seed))
    return rows + estimate_rows("normalised_score", [f"probability_of_improvement_over_{options.baseline}"], points,
                                intervals)


def curve_rows(runs: list[Run], options: Options, notes: list[str]) -> tuple[list[dict], str]:
    """IQM of the normalised running-mean return at evenly spaced fractions of training, with CIs; and the
    curves' x label (environment steps, or % of training when the runs have different budgets)."""
    fractions = np.arange(1, options.curve_points + 1) / options.curve_points
    def curve(run: Run) -> np.ndarray:
        return normalise(stats.windowed_mean_returns(run.steps, run.returns, fractions, options.final_fraction), run)

    curves, _ = score_matrices(runs, curve, "sample-efficiency curves", options.baseline)
    complete = ~np.any([np.isnan(c).any(axis=(0, 1)) for c in curves.values()], axis=0)
    if not complete.any():
        notes.append("no sample-efficiency curves: no point where every run had finished an episode")
        return [], ""
    if not complete.all():
        notes.append(f"sample-efficiency curves: dropping {np.sum(~complete)} early point(s) where a run had no "
                     "episode yet")
    totals = {r.total_timesteps for r in runs}
    if len(totals) == 1:
        x, xlabel = fractions[complete] * totals.pop(), "environment steps"
    else:
        x, xlabel = fractions[complete] * 100, "% of training (runs have different total_timesteps)"
    points, intervals = stats.interval_estimates({m: c[:, :, complete] for m, c in curves.items()},
                                                 stats.iqm_over_steps, options.reps,
                                                 np.random.RandomState(options.seed))
    return [dict(quantity=CURVE, metric="IQM", method=m, step=float(step), point=float(points[m][i]),
                 ci_low=float(intervals[m][0, i]), ci_high=float(intervals[m][1, i]))
            for m in points for i, step in enumerate(x)], xlabel


def evaluation_names(runs: list[Run]) -> list[str]:
    """The evaluation metrics of the runs, sorted: the attention metrics, then the evidence metrics."""
    names = sorted({name for r in runs for name in r.evaluation})
    evidence = [n for n in names if n.startswith(EVIDENCE_PREFIXES)]
    return [n for n in names if n not in evidence] + evidence


def evaluation_rows(runs: list[Run], options: Options, notes: list[str]) -> list[dict]:
    """Per-run metrics of attention_eval.json / shift_eval.json, aggregated like the scores (not normalised),
    each over the runs that have it; a method whose runs have it undefined on some seeds (Run.undefined) is
    left out of that metric's estimates, with a note, so that the others keep equal seeds."""
    rows = []
    for name in evaluation_names(runs):
        undefined = [r for r in runs if name in r.undefined]
        left_out = {r.method for r in undefined}
        for method in ordered_methods(left_out, options.baseline):
            seeds = ", ".join(f"{short_name(r.env)} seed {r.seed}" for r in undefined if r.method == method)
            notes.append(f"{name}: '{method}' left out of its estimates (undefined for {seeds})")
        evaluated = [r for r in runs if name in r.evaluation and r.method not in left_out]
        rows += [dict(quantity=name, metric="run", method=r.method, scenario=r.env, seed=r.seed,
                      point=r.evaluation[name]) for r in evaluated]
        matrices, _ = score_matrices(evaluated, lambda r: np.float64(r.evaluation[name]),
                                     f"evaluation metric '{name}'", options.baseline)
        points, intervals = stats.interval_estimates(matrices, stats.evaluation_aggregates, options.reps,
                                                     np.random.RandomState(options.seed))
        rows += estimate_rows(name, EVALUATION_AGGREGATES, points, intervals)
    return rows


def significance_rows(runs: list[Run], options: Options, notes: list[str]) -> list[dict]:
    """Welch's t-test over seeds of the reference against every other method, per scenario and metric
    (the final return and, with ``options.attention``, each evaluation metric)."""
    if options.reference not in {r.method for r in runs}:
        notes.append(f"no significance tests: no run of method '{options.reference}' (--reference)")
        return []
    values = {"final_return": lambda r: final_return(r, options.final_fraction)}
    for name in sorted({name for r in runs for name in r.evaluation}) if options.attention else []:
        values[name] = lambda r, name=name: r.evaluation.get(name, np.nan)
    rows = []
    for quantity, value in values.items():
        for env in sorted({r.env for r in runs}):
            def sample(method):
                found = [value(r) for r in runs if r.env == env and r.method == method]
                return np.array([v for v in found if np.isfinite(v)])

            reference = sample(options.reference)
            for method in ordered_methods((r.method for r in runs), options.baseline):
                other = sample(method)
                if method == options.reference or not len(other):
                    continue
                rows.append(dict(quantity=quantity, metric=f"welch_p_{options.reference}_vs", method=method,
                                 scenario=env, point=stats.welch_p_value(reference, other),
                                 n=f"{len(reference)} vs {len(other)}"))
    return rows


def aggregate_runs(runs: list[Run], options: Options) -> Aggregate:
    """Every aggregate of the runs; InputError if the methods do not have equal seeds on every scenario."""
    if runs and runs[0].paradigm == CLASSIFIER:
        return aggregate_classifier_runs(runs, options)
    notes: list[str] = []
    rows = normaliser_rows(runs) + final_score_rows(runs, options, notes)
    curves, xlabel = curve_rows(runs, options, notes)
    rows += curves
    if options.attention:
        rows += evaluation_rows(runs, options, notes)
    scenarios = sorted({r.env for r in runs})
    seeds = len([r for r in runs if r.method == runs[0].method and r.env == runs[0].env])
    methods = ordered_methods((r.method for r in runs), options.baseline)
    notes.insert(0, f"{len(methods)} method(s) x {len(scenarios)} scenario(s) ({', '.join(map(short_name, scenarios))})"
                    f" x {seeds} seed(s)")
    return Aggregate(rows, significance_rows(runs, options, notes), scenarios, seeds, xlabel, notes)


# ---------------------------------------------------------------- classifier runs


def classifier_metric_names(runs: list[Run]) -> list[str]:
    """The ``SPLIT_metric`` keys of the runs, split by split in their classifier_eval.json's order."""
    return list(dict.fromkeys(name for r in runs for name in r.evaluation))


def classifier_rows(runs: list[Run], options: Options) -> list[dict]:
    """Per metric: the per-run values, the IQM with its CI over seeds per architecture, and the IQM, mean,
    median with stratified CIs over architectures x seeds."""
    rows = []
    for name in classifier_metric_names(runs):
        evaluated = [r for r in runs if name in r.evaluation]
        def value(run: Run) -> np.float64:
            return np.float64(run.evaluation[name])

        rows += [dict(quantity=name, metric="run", method=r.method, scenario=r.env, seed=r.seed,
                      point=r.evaluation[name]) for r in evaluated]
        for architecture in sorted({r.env for r in evaluated}):
            matrices, _ = score_matrices([r for r in evaluated if r.env == architecture], value,
                                         f"evaluation metric '{name}' on '{architecture}'", options.baseline)
            points, intervals = stats.interval_estimates(matrices, stats.iqm_of_runs, options.reps,
                                                         np.random.RandomState(options.seed))
            rows += [dict(quantity=name, metric="IQM", method=m, scenario=architecture, point=float(points[m][0]),
                          ci_low=float(intervals[m][0, 0]), ci_high=float(intervals[m][1, 0])) for m in points]
        matrices, _ = score_matrices(evaluated, value, f"evaluation metric '{name}'", options.baseline)
        points, intervals = stats.interval_estimates(matrices, stats.evaluation_aggregates, options.reps,
                                                     np.random.RandomState(options.seed))
        rows += estimate_rows(name, EVALUATION_AGGREGATES, points, intervals)
    return rows


def classifier_test_rows(runs: list[Run], options: Options, notes: list[str]) -> list[dict]:
    """The reference against every other method, per metric: Welch's and the paired t-test over seeds per
    architecture, the stratified permutation test across architectures."""
    if options.reference not in {r.method for r in runs}:
        notes.append(f"no significance tests: no run of method '{options.reference}' (--reference)")
        return []
    architectures = sorted({r.env for r in runs})
    others = [m for m in ordered_methods((r.method for r in runs), options.baseline) if m != options.reference]
    rows = []
    for name in classifier_metric_names(runs):
        def by_seed(method: str, architecture: str) -> dict[int, float]:
            return {r.seed: r.evaluation[name] for r in sorted(runs, key=lambda r: r.seed)
                    if r.method == method and r.env == architecture and name in r.evaluation}

        for architecture in architectures:
            reference = by_seed(options.reference, architecture)
            for method in others:
                other = by_seed(method, architecture)
                if not other:
                    continue
                common = sorted(reference.keys() & other.keys())
                rows += [dict(quantity=name, metric=f"welch_p_{options.reference}_vs", method=method,
                              scenario=architecture, n=f"{len(reference)} vs {len(other)}",
                              point=stats.welch_p_value(np.array(list(reference.values())),
                                                        np.array(list(other.values())))),
                         dict(quantity=name, metric=f"paired_p_{options.reference}_vs", method=method,
                              scenario=architecture, n=f"{len(common)} pairs",
                              point=stats.paired_p_value(np.array([reference[s] for s in common]),
                                                         np.array([other[s] for s in common])))]
        if len(architectures) < 2:
            continue
        x = [np.array(list(by_seed(options.reference, a).values())) for a in architectures]
        for method in others:
            y = [np.array(list(by_seed(method, a).values())) for a in architectures]
            if not any(len(a) and len(b) for a, b in zip(x, y)):
                continue
            both = [(a, b) for a, b in zip(x, y) if len(a) and len(b)]
            rows.append(dict(quantity=name, metric=f"permutation_p_{options.reference}_vs", method=method,
                             n=f"{sum(len(a) for a, _ in both)} vs {sum(len(b) for _, b in both)}",
                             point=stats.stratified_permutation_p(x, y, options.reps,
                                                                  np.random.default_rng(options.seed))))
    return rows


def aggregate_classifier_runs(runs: list[Run], options: Options) -> Aggregate:
    """Every aggregate of classifier runs; InputError if the methods do not have equal seeds on an
    architecture (or, across architectures, on every architecture)."""
    notes: list[str] = []
    rows = classifier_rows(runs, options)
    architectures = sorted({r.env for r in runs})
    seeds = len([r for r in runs if r.method == runs[0].method and r.env == runs[0].env])
    methods = ordered_methods((r.method for r in runs), options.baseline)
    notes.append(f"{len(methods)} method(s) x {len(architectures)} architecture(s) ({', '.join(architectures)}) x "
                 f"{seeds} seed(s), classifier runs")
    notes.append("no return curves, final scores or probability of improvement: classifier runs have no episodic "
                 "returns (each record's curves.csv holds its per-epoch curves)")
    tests = classifier_test_rows(runs, options, notes)
    splits = list(dict.fromkeys(split for r in runs for split in r.splits))
    return Aggregate(rows, tests, architectures, seeds, "", notes, paradigm=CLASSIFIER, splits=splits)
