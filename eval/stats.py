"""The statistics of a study, on arrays: aggregates, the stratified bootstrap, tests and power.

Scores come as (seeds, scenarios) arrays, or with a leading replication axis, (reps, seeds, scenarios),
where a statistic is computed for every replication at once. Nothing here reads files, prints or seeds
numpy's global generator: the random draws come from the ``RandomState`` / ``Generator`` passed in.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import trim_mean, ttest_1samp, ttest_ind, ttest_rel
from statsmodels.stats.power import TTestIndPower, TTestPower


def iqm(values: np.ndarray) -> np.ndarray:
    """Interquartile mean over axis 1 (the runs) of a (reps, runs, ...) array: the mean of the middle 50%
    (scipy's ``trim_mean`` at 0.25, as rliable's ``metrics.aggregate_iqm``)."""
    return trim_mean(values, 0.25, axis=1)


def score_aggregates(scores: np.ndarray) -> np.ndarray:
    """(reps, 4) IQM, mean, median, optimality gap of each (seeds, scenarios) sample of a (reps, seeds,
    scenarios) array; rliable's definitions (``metrics.aggregate_*``): the median is the median over
    scenarios of the mean over seeds, the optimality gap ``1 - mean(min(score, 1))``."""
    flat = scores.reshape(len(scores), -1)
    return np.stack([iqm(flat), flat.mean(axis=1), np.median(scores.mean(axis=1), axis=1),
                     1 - np.minimum(flat, 1).mean(axis=1)], axis=1)


def evaluation_aggregates(scores: np.ndarray) -> np.ndarray:
    """(reps, 3) IQM, mean, median: the aggregates of a metric without a maximum (no optimality gap)."""
    return score_aggregates(scores)[:, :3]


def iqm_of_runs(scores: np.ndarray) -> np.ndarray:
    """(reps, 1) IQM over scenarios x seeds of a (reps, seeds, scenarios) array."""
    return iqm(scores.reshape(len(scores), -1))[:, None]


def iqm_over_steps(scores: np.ndarray) -> np.ndarray:
    """(reps, steps) IQM over runs x scenarios at each step of a (reps, seeds, scenarios, steps) array."""
    return iqm(scores.reshape(scores.shape[0], -1, scores.shape[-1]))


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> np.ndarray:
    """(reps, 1) P(X > Y) per scenario, ties counting 1/2, averaged over scenarios, of (reps, seeds,
    scenarios) arrays: rliable's ``metrics.probability_of_improvement`` (Mann-Whitney U / (n_x n_y))."""
    x, y = scores_x[:, :, None, :], scores_y[:, None, :, :]
    per_scenario = np.mean(x > y, axis=(1, 2)) + 0.5 * np.mean(x == y, axis=(1, 2))
    return per_scenario.mean(axis=1, keepdims=True)


BOOTSTRAP_CHUNK = 2_000_000  # resampled values held in memory at once


def stratified_bootstrap(samples: list[np.ndarray], statistic: Callable, reps: int,
                         random_state: np.random.RandomState) -> np.ndarray:
    """(reps, k) ``statistic`` of ``reps`` stratified resamples of ``samples`` (arrays (seeds, scenarios, ...)).

    rliable's ``StratifiedBootstrap`` (one sample) and ``StratifiedIndependentBootstrap`` (a pair, resampled
    independently), vectorised: a resample picks a seed independently for every cell of each array, in
    rliable's order, so that with numpy's global generator in the state of ``random_state`` rliable gives
    the same intervals to the last digit (rliable draws from the global generator whatever it is given).
    """
    shapes = [sample.shape for sample in samples]
    sizes = [int(np.prod(shape)) for shape in shapes]
    cells = [tuple(np.ogrid[tuple(slice(n) for n in shape[1:])]) for shape in shapes]
    if len({shape[0] for shape in shapes}) > 1:  # unequal seed counts: rliable's draws, one replication at a time
        return np.concatenate([statistic(*(sample[(random_state.randint(0, shape[0], size=(1, *shape)), *cell)]
                                           for sample, shape, cell in zip(samples, shapes, cells)))
                               for _ in range(reps)])
    values, chunk = [], max(1, BOOTSTRAP_CHUNK // sum(sizes))
    for start in range(0, reps, chunk):
        count = min(chunk, reps - start)
        rows = np.split(random_state.randint(0, shapes[0][0], size=(count, sum(sizes))), np.cumsum(sizes)[:-1],
                        axis=1)
        values.append(statistic(*(sample[(row.reshape(count, *shape), *cell)]
                                  for sample, row, shape, cell in zip(samples, rows, shapes, cells))))
    return np.concatenate(values)


def interval_estimates(score_dict: dict, statistic: Callable, reps: int,
                       random_state: np.random.RandomState) -> tuple[dict, dict]:
    """Point estimates and 95% percentile intervals of the stratified bootstrap, per key: rliable's
    ``get_interval_estimates`` with the same draws (``statistic`` takes arrays with a leading replication
    axis). A value is an array (seeds, scenarios, ...) or a list of arrays (a pair, for a comparison)."""
    points, intervals = {}, {}
    for key, value in score_dict.items():
        samples = [np.asarray(v, dtype=np.float64) for v in (value if isinstance(value, list) else [value])]
        points[key] = statistic(*(sample[None] for sample in samples))[0]
        intervals[key] = np.percentile(stratified_bootstrap(samples, statistic, reps, random_state), [2.5, 97.5],
                                       axis=0)
    return points, intervals


def iqm_interval(cells: list[np.ndarray], reps: int,
                 random_state: np.random.RandomState) -> tuple[float, float, float] | None:
    """IQM over scenarios x seeds of one value array per scenario, and its 95% stratified-bootstrap CI; None
    without values, or with unequal seed counts across scenarios (the bootstrap needs a seeds x scenarios
    table)."""
    if not cells or any(len(c) == 0 for c in cells) or len({len(c) for c in cells}) > 1:
        return None
    table = np.stack(cells, axis=1)
    low, high = np.percentile(stratified_bootstrap([table], iqm_of_runs, reps, random_state)[:, 0], [2.5, 97.5])
    return float(iqm_of_runs(table[None])[0, 0]), float(low), float(high)


def welch_p_value(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) of mean(x) = mean(y); NaN with < 2 values a side.

    Two samples without spread: 1 if they are equal, 0 if not (the test's limit as the spread goes to 0). One
    sample without spread: Welch's test is then the one-sample t-test of the other against that value, which
    is what it computes (scipy's Welch warns of precision loss on the sample without spread).
    """
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return 1.0 if x[0] == y[0] else 0.0
    if np.ptp(y) == 0:
        return float(ttest_1samp(x, y[0]).pvalue)
    if np.ptp(x) == 0:
        return float(ttest_1samp(y, x[0]).pvalue)
    return float(ttest_ind(x, y, equal_var=False).pvalue)


def paired_p_value(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test of mean(x - y) = 0, x[i] and y[i] from the same seed; NaN with
    fewer than 2 pairs.

    Differences without spread: 1 if they are all 0, 0 if not (the test's limit as the spread goes to 0).
    """
    if len(x) != len(y):
        raise ValueError(f"a paired test needs as many values on each side, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    differences = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    if np.ptp(differences) == 0:
        return 1.0 if differences[0] == 0 else 0.0
    return float(ttest_rel(x, y).pvalue)


def stratified_permutation_p(x: list[np.ndarray], y: list[np.ndarray], reps: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of the difference of the means of x and y over all their values (one array per
    scenario each), under label permutations within each scenario (Monte Carlo, with the +1 correction);
    scenarios where either side has no value are left out. NaN with fewer than 4 values in all."""
    pairs = [(a, b) for a, b in zip(x, y) if len(a) and len(b)]
    if not pairs or sum(len(a) + len(b) for a, b in pairs) < 4:
        return float("nan")
    n_x = sum(len(a) for a, _ in pairs)
    n_y = sum(len(b) for _, b in pairs)
    observed = sum(a.sum() for a, _ in pairs) / n_x - sum(b.sum() for _, b in pairs) / n_y
    sum_x = np.zeros(reps)
    for a, b in pairs:
        pooled = np.concatenate([a, b])
        shuffled = rng.permuted(np.broadcast_to(pooled, (reps, len(pooled))), axis=1)
        sum_x += shuffled[:, :len(a)].sum(axis=1)
    total = sum(a.sum() + b.sum() for a, b in pairs)
    permuted = sum_x / n_x - (total - sum_x) / n_y
    extreme = np.sum(np.abs(permuted) >= abs(observed) - 1e-12)
    return float((extreme + 1) / (reps + 1))


def seeds_for_power(x: np.ndarray, y: np.ndarray, alpha: float, power: float = 0.8, most: int = 200) -> int | None:
    """Seeds per method at which a two-sided two-sample t-test at level ``alpha`` detects the observed
    difference (Cohen's d with the pooled standard deviation of x and y) with the given power: the smallest
    n whose power is at least ``power`` by statsmodels' ``TTestIndPower``. None if the difference or the
    spread is 0, or if it needs more than ``most``."""
    spread = np.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2) if len(x) > 1 and len(y) > 1 else np.nan
    if not np.isfinite(spread) or spread == 0 or x.mean() == y.mean():
        return None
    effect = abs(x.mean() - y.mean()) / spread
    seeds = np.arange(2, most + 1)
    enough = TTestIndPower().power(effect_size=effect, nobs1=seeds, alpha=alpha, alternative="two-sided") >= power
    return int(seeds[enough][0]) if enough.any() else None


def pairs_for_power(differences: np.ndarray, alpha: float, power: float = 0.8, most: int = 200) -> int | None:
    """Seeds (pairs) at which a two-sided paired t-test at level ``alpha`` detects the observed mean of the
    per-seed differences (effect: their mean over their standard deviation) with the given power: the smallest
    n whose power is at least ``power`` by statsmodels' ``TTestPower``. None if the mean or the spread is 0, or
    if it needs more than ``most``."""
    differences = np.asarray(differences, dtype=np.float64)
    spread = np.std(differences, ddof=1) if len(differences) > 1 else np.nan
    if not np.isfinite(spread) or spread == 0 or differences.mean() == 0:
        return None
    effect = abs(differences.mean()) / spread
    seeds = np.arange(2, most + 1)
    enough = TTestPower().power(effect_size=effect, nobs=seeds, alpha=alpha, alternative="two-sided") >= power
    return int(seeds[enough][0]) if enough.any() else None


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
