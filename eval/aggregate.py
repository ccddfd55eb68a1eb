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

Classifier runs (agents/camal_classifier.py and their records: eval/runs.py) are aggregated with the
architecture in the scenario's role: every metric of classifier_eval.json (``SPLIT_metric``, e.g.
``test_balanced_relevance_mass``) as IQM [95% CI] over seeds per architecture and IQM, mean, median with
stratified CIs over architectures x seeds; Welch's and the paired t-test over seeds (same seed: same
initialisation and data order) of ``--reference`` against every other method per architecture, and the
stratified permutation test across architectures. They have no returns: no scores, curves or probability of
improvement. Figures: ``metrics_SPLIT.png``, ``p_values.png`` (Welch) and ``paired_p_values.png``. A folder
mixing RL and classifier runs is refused.

Outputs in --out: ``interval_estimates.png``, ``sample_efficiency.png``,
``probability_of_improvement.png``, ``attention.png`` and ``evidence.png`` (occlusion, shift; when
there are evaluations), ``p_values.png`` and ``aggregate.csv``, every number in long format; tables are
printed on stdout. The command line of eval/runs.py (reading), eval/estimates.py and eval/stats.py
(statistics) and eval/plots.py (figures).
"""


from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import tyro

from eval import estimates, plots, selection
from eval.runs import CLASSIFIER, InputError, check_output_folder, load_runs, ordered_methods


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
    """seed of the random state of each bootstrap (a fresh one per bootstrap, drawn in rliable's order)"""
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


def print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def interval_cells(table: pd.DataFrame) -> list[str]:
    """"point [low, high]" of each row of a table of estimates."""
    return [f"{p:.3f} [{lo:.3f}, {hi:.3f}]" for p, lo, hi in zip(table.point, table.ci_low, table.ci_high)]


def p_value_cells(table: pd.DataFrame) -> list[str]:
    """"p (n)" of each row of a table of tests."""
    return [f"{'n/a' if np.isnan(p) else f'{p:.3g}'} ({n})" for p, n in zip(table.point, table.n)]


def print_tables(rows: list[dict]) -> None:
    table = pd.DataFrame([r for r in rows if "ci_low" in r and r["quantity"] != estimates.CURVE])
    table["cell"] = interval_cells(table)
    for quantity, part in table.groupby("quantity", sort=False):
        is_improvement = part.metric.str.startswith("probability_of_improvement")
        for cells, title in ((part[~is_improvement], ""), (part[is_improvement], ", probability of improvement")):
            if len(cells):
                print(f"\n{quantity}{title}, point [95% CI]:")
                table_ = cells.pivot(index="method", columns="metric", values="cell")
                print(table_.reindex(index=cells.method.unique(), columns=cells.metric.unique()).to_string())


def print_p_values(rows: list[dict], reference: str) -> None:
    table = pd.DataFrame(rows)
    table["cell"] = p_value_cells(table)
    print(f"\nWelch's t-test over seeds, {reference} vs each method: two-sided p-value (n seeds {reference} vs other):")
    pivot = table.pivot(index=["quantity", "scenario"], columns="method", values="cell")
    print(pivot.reindex(columns=table.method.unique()).to_string())


def print_classifier_tables(rows: list[dict], architectures: list[str]) -> None:
    """Per architecture, then across architectures: each metric's IQM [95% CI] per method."""
    table = pd.DataFrame([r for r in rows if r["metric"] == "IQM"])
    table["cell"] = interval_cells(table)
    table["scenario"] = table.scenario.fillna(ALL_ARCHITECTURES)
    for where in [*architectures, ALL_ARCHITECTURES]:
        part = table[table.scenario == where]
        title = "over architectures x seeds" if where == ALL_ARCHITECTURES else f"on {where}, over seeds"
        print(f"\nIQM [95% CI] {title}:")
        pivot = part.pivot(index="quantity", columns="method", values="cell")
        print(pivot.reindex(index=part.quantity.unique(), columns=part.method.unique()).to_string())


def print_classifier_tests(rows: list[dict], reference: str) -> None:
    table = pd.DataFrame(rows)
    table["cell"] = p_value_cells(table)
    table["scenario"] = table.scenario.fillna(ALL_ARCHITECTURES) if "scenario" in table else ALL_ARCHITECTURES
    for kind, test in (("welch", "Welch's t-test over seeds (n seeds a side)"),
                       ("paired", "paired t-test over seeds (n pairs: same seed)"),
                       ("permutation", "stratified permutation test across architectures (n runs a side)")):
        part = table[table.metric == f"{kind}_p_{reference}_vs"]
        if len(part):
            print(f"\n{test}, {reference} vs each method: two-sided p-value:")
            pivot = part.pivot(index=["quantity", "scenario"], columns="method", values="cell")
            print(pivot.reindex(columns=part.method.unique()).to_string())


ALL_ARCHITECTURES = "all architectures"


def main(args: Args) -> None:
    """Refuse bad input before reading anything; write nothing unless every aggregate could be computed."""
    if not 0 < args.final_fraction <= 1:
        raise SystemExit(f"error: --final-fraction must be in (0, 1], got {args.final_fraction}")
    if args.reps < 1 or args.curve_points < 1:
        raise SystemExit(f"error: --reps and --curve-points must be >= 1, got {args.reps} and {args.curve_points}")
    out = Path(args.out)
    options = estimates.Options(final_fraction=args.final_fraction, reps=args.reps, curve_points=args.curve_points,
                                baseline=args.baseline, reference=args.reference, seed=args.seed,
                                attention=args.attention)
    try:
        check_output_folder(out)
        print(f"reading the runs under {args.runs_dir} ...", flush=True)
        runs = load_runs(Path(args.runs_dir), args.final_fraction, args.normalisation, print_warning)
        try:
            runs = selection.select_runs(runs, args.scenarios, args.methods, args.seeds, owner=args.runs_dir)
        except ValueError as error:
            raise InputError(error)
        what = ("the evaluation metrics of" if runs[0].paradigm == CLASSIFIER
                else "the normalised final scores, curves and evaluation metrics of")
        print(f"bootstrapping {what} {len(runs)} runs ({args.reps} reps an interval) ...", end=" ", flush=True)
        start = time.perf_counter()
        aggregate = estimates.aggregate_runs(runs, options)
        print(f"{time.perf_counter() - start:.1f} s")
    except InputError as error:
        raise SystemExit(f"error: {error}")
    print("\n".join(aggregate.notes))
    out.mkdir(parents=True, exist_ok=True)
    colors = plots.method_colors(ordered_methods((r.method for r in runs), args.baseline))
    plots.draw_figures(out, aggregate, colors, args.baseline, args.reference, args.final_fraction)
    csv_path = out / "aggregate.csv"
    pd.DataFrame(aggregate.rows + aggregate.tests, columns=estimates.COLUMNS).to_csv(csv_path, index=False)
    if aggregate.paradigm == CLASSIFIER:
        print_classifier_tables(aggregate.rows, aggregate.scenarios)
        if aggregate.tests:
            print_classifier_tests(aggregate.tests, args.reference)
    else:
        print_tables(aggregate.rows)
        if aggregate.tests:
            print_p_values(aggregate.tests, args.reference)
    print(f"\nwrote {csv_path} and the figures in {out}/")


if __name__ == "__main__":
    main(tyro.cli(Args))
