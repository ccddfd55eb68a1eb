"""The figures of an aggregate (eval/estimates.py), drawn with rliable's plot_utils and matplotlib.

``draw_figures`` writes, from an Aggregate's rows: ``interval_estimates.png``, ``sample_efficiency.png``,
``probability_of_improvement.png``, ``attention.png`` and ``evidence.png`` (occlusion, shift; when there are
evaluations) and ``p_values.png``. For classifier runs: ``metrics_SPLIT.png`` (every metric of a split, IQM over
architectures x seeds with its CI), ``p_values.png`` (Welch's t-test) and ``paired_p_values.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rliable import plot_utils  # noqa: E402

from eval.estimates import CURVE, EVIDENCE_PREFIXES, SCORE_AGGREGATES, Aggregate  # noqa: E402
from eval.runs import CLASSIFIER  # noqa: E402


def method_colors(methods: list[str]) -> dict:
    """A colour per method, in order, the same in every figure of a set."""
    return {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}


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


def plot_p_values(path: Path, rows: list[dict], reference: str, test: str = "Welch's t-test over seeds") -> None:
    """One panel per compared method: p-value of each metric (rows) on each scenario (columns), of one test."""
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
    fig.suptitle(f"{test}, two-sided p-value (colour: -log10 p, bright = small p)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def estimates_by_method(rows: list[dict], quantity: str, metrics) -> tuple[dict, dict]:
    """{method: points (k,)} and {method: intervals (2, k)} of a quantity's estimate rows, one per metric."""
    found = {(r["method"], r["metric"]): r for r in rows if r["quantity"] == quantity and "ci_low" in r}
    methods = list(dict.fromkeys(m for m, metric in found if metric in metrics))
    points = {m: np.array([found[m, metric]["point"] for metric in metrics]) for m in methods}
    intervals = {m: np.array([[found[m, metric][end] for metric in metrics] for end in ("ci_low", "ci_high")])
                 for m in methods}
    return points, intervals


def plot_evaluation(path: Path, rows: list[dict], names: list[str], title: str, colors: dict) -> None:
    """The IQM with its CI of each evaluation metric in ``names``; a method without a metric has no bar there."""
    iqms = {name: {r["method"]: r for r in rows if r["quantity"] == name and r["metric"] == "IQM"} for name in names}
    methods = [m for m in colors if any(m in found for found in iqms.values())]
    nan = {"point": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    points = {m: [iqms[n].get(m, nan)["point"] for n in names] for m in methods}
    intervals = {m: np.array([[iqms[n].get(m, nan)[end] for end in ("ci_low", "ci_high")] for n in names]).T
                 for m in methods}
    plot_intervals(path, points, intervals, names, title, "IQM", colors,
                   columns=2)  # names are sorted: each metric sits beside its chance / random-order control


def draw_figures(out: Path, aggregate: Aggregate, colors: dict, baseline: str, reference: str,
                 final_fraction: float) -> None:
    """Every figure of the aggregate into the folder ``out`` (which must exist)."""
    if aggregate.paradigm == CLASSIFIER:
        draw_classifier_figures(out, aggregate, colors, reference)
        return
    rows, scenarios, seeds = aggregate.rows, len(aggregate.scenarios), aggregate.seeds
    points, intervals = estimates_by_method(rows, "normalised_score", SCORE_AGGREGATES)
    plot_score_intervals(out / "interval_estimates.png", points, intervals, SCORE_AGGREGATES,
                         f"Normalised final score: point and 95% stratified-bootstrap CI "
                         f"({scenarios} scenarios x {seeds} seeds)", colors)
    improvement = f"probability_of_improvement_over_{baseline}"
    points, intervals = estimates_by_method(rows, "normalised_score", [improvement])
    if points:
        plot_probability_of_improvement(out / "probability_of_improvement.png", points, intervals, baseline, colors)
    curve = [r for r in rows if r["quantity"] == CURVE]
    if curve:
        x = np.array(list(dict.fromkeys(r["step"] for r in curve)))
        points = {m: np.array([r["point"] for r in curve if r["method"] == m]) for m in dict.fromkeys(
            r["method"] for r in curve)}
        intervals = {m: np.array([[r[end] for r in curve if r["method"] == m] for end in ("ci_low", "ci_high")])
                     for m in points}
        plot_curves(out / "sample_efficiency.png", x, points, intervals, aggregate.curve_xlabel,
                    f"Sample efficiency: IQM over {scenarios} scenarios x {seeds} seeds, 95% CIs\n"
                    f"(return: mean of the episodes ending in the preceding {final_fraction:.0%} of steps)", colors)
    skip = {"normaliser", "final_return", "normalised_score", CURVE}
    names = list(dict.fromkeys(r["quantity"] for r in rows if r["quantity"] not in skip))
    attention = [n for n in names if not n.startswith(EVIDENCE_PREFIXES)]
    evidence = [n for n in names if n.startswith(EVIDENCE_PREFIXES)]
    if attention:
        plot_evaluation(out / "attention.png", rows, attention,
                        "Attention metrics: IQM over scenarios x seeds, point and 95% CI", colors)
    if evidence:
        plot_evaluation(out / "evidence.png", rows, evidence,
                        "Occlusion and background shift: IQM over scenarios x seeds, point and 95% CI", colors)
    if aggregate.tests:
        plot_p_values(out / "p_values.png", aggregate.tests, reference)


def split_of(name: str, splits: list[str]) -> str | None:
    """The split of a ``SPLIT_metric`` key: the longest split it starts with (test_balanced before test)."""
    found = [split for split in splits if name.startswith(f"{split}_")]
    return max(found, key=len) if found else None


def draw_classifier_figures(out: Path, aggregate: Aggregate, colors: dict, reference: str) -> None:
    """A figure of each split's metrics across architectures, and the per-architecture p-values of each test."""
    across = [r for r in aggregate.rows if "scenario" not in r]
    names = list(dict.fromkeys(r["quantity"] for r in across))
    where = f"{len(aggregate.scenarios)} architectures x {aggregate.seeds} seeds"
    for split in aggregate.splits:
        part = [n for n in names if split_of(n, aggregate.splits) == split]
        if part:
            plot_evaluation(out / f"metrics_{split}.png", across, part,
                            f"{split}: IQM over {where}, point and 95% CI", colors)
    for kind, file, test in (("welch", "p_values.png", "Welch's t-test over seeds"),
                             ("paired", "paired_p_values.png", "Paired t-test over seeds (same seed: same init and "
                                                               "data order)")):
        tests = [r for r in aggregate.tests if r["metric"] == f"{kind}_p_{reference}_vs"]
        if tests:
            plot_p_values(out / file, tests, reference, test)
