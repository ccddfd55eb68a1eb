"""The README's results section, regenerated from a study's run records alone.

    python eval/report.py results/paper --readme README.md     # rewrite the README's block, draw the figures
    python eval/report.py results/paper --check README.md      # exit 1 if the README's block is not this output

Reads every complete run under RESULTS (records of eval/record.py, or run folders) and writes a markdown
block: per scenario, then across scenarios, each metric as IQM [95% CI] per method with the two-sided
p-value of --reference (CAMAL) against each other method, and a table of the paper's claims with a
verdict per scenario. The block replaces the lines between ``<!-- report:RESULTS:begin -->`` and
``<!-- report:RESULTS:end -->`` of the README (RESULTS as given on the command line). The figures of
eval/aggregate.py go to --figures: one set over the scenarios where every method ran, and one for the
reference and the baseline over all scenarios.

Statistics (docs/method.md, Statistics):
- per scenario: IQM over seeds with a 95% percentile bootstrap CI (rliable's stratified bootstrap with one
  task); Welch's t-test over seeds, two-sided;
- across scenarios: IQM over scenarios x seeds with the stratified bootstrap CI, each method over the
  scenarios it ran; a stratified permutation test of the mean difference (method labels shuffled within
  each scenario), two-sided, over the scenarios both methods ran;
- a claim holds on a scenario when its test gives p < --alpha in the claimed direction; "not settled"
  otherwise, with the seeds per method that the observed effect would need for 80% power (two-sample
  t-test). p-values are per test, not corrected for the number of tests.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro
from scipy import stats

from eval import aggregate
from eval.aggregate import Run, final_return, normalise, welch_p_value
from scenarios import short_name

METRICS = (
    # (key, label, the better direction: +1 higher, -1 lower, 0 a control)
    ("normalised_score", "normalised score", +1),
    ("relevance_mass", "relevance mass", +1),
    ("relevance_mass_chance", "chance level of mass, rank and pointing (target's share of the frame)", 0),
    ("relevance_rank", "relevance rank", +1),
    ("pointing_game", "pointing game", +1),
    ("deletion_auc", "deletion AUC, map order", -1),
    ("deletion_auc_random", "deletion AUC, random order", 0),
    ("deletion_gain", "deletion gain (random order - map order)", +1),
    ("insertion_auc", "insertion AUC, map order", +1),
    ("insertion_auc_random", "insertion AUC, random order", 0),
    ("insertion_gain", "insertion gain (map order - random order)", +1),
    ("occlusion_drop", "occlusion drop of pi(a*), target", +1),
    ("occlusion_drop_random", "occlusion drop of pi(a*), random region", 0),
    ("occlusion_gain", "occlusion drop, target - random region", +1),
    ("shift_return_ratio", "return under background shift / without", +1),
    ("shift_action_agreement", "action agreement under background shift", +1),
)
DERIVED = {
    "deletion_gain": ("deletion_auc_random", "deletion_auc"),
    "insertion_gain": ("insertion_auc", "insertion_auc_random"),
    "occlusion_gain": ("occlusion_drop", "occlusion_drop_random"),
}
"""per-run differences of two evaluation metrics: (minuend, subtrahend)"""

CLAIMS = (
    # (claim, metric, the method compared with, direction): "not_worse" holds unless significantly lower
    ("alignment gain over vanilla", "relevance_mass", "vanilla", "greater"),
    ("pointing gain over vanilla", "pointing_game", "vanilla", "greater"),
    ("faithfulness gain over vanilla (deletion)", "deletion_gain", "vanilla", "greater"),
    ("faithfulness gain over vanilla (insertion)", "insertion_gain", "vanilla", "greater"),
    ("return not worse than vanilla", "normalised_score", "vanilla", "not_worse"),
    ("alignment needs the true masks (vs random masks)", "relevance_mass", "camal-random", "greater"),
    ("alignment gain over RRR", "relevance_mass", "rrr", "greater"),
    ("return under background shift holds better than vanilla's", "shift_return_ratio", "vanilla", "greater"),
    ("target occlusion matters more than for vanilla", "occlusion_gain", "vanilla", "greater"),
)
ALL = "all scenarios"


@dataclass
class Args:
    """Regenerate the README's results tables and figures from a study's run records."""

    results: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RESULTS")] = "results/paper"
    """folder of the study's run records (eval/record.py) or run folders"""
    readme: str | None = None
    """write the block into this README (between its report markers for RESULTS) and draw the figures"""
    check: str | None = None
    """compare this README's block with the output and exit 1 if they differ (nothing is written)"""
    figures: str | None = None
    """folder of the figures (None: docs/results/<name of RESULTS>)"""
    reference: str = "camal"
    """method tested against every other method"""
    baseline: str = "vanilla"
    """method listed first, and the probability-of-improvement baseline of the figures"""
    reps: int = 10000
    """bootstrap replications of each interval, and permutations of each across-scenario test"""
    alpha: float = 0.05
    """significance level of the verdicts"""
    final_fraction: float = 0.1
    """final score = mean return of the episodes in this last fraction of a run's logged steps"""
    seed: int = 0
    """seed of the bootstraps and permutations (set before each one, so every cell is reproducible alone)"""


# ---------------------------------------------------------------- per-run values


def run_values(run: Run, final_fraction: float) -> dict[str, float]:
    """Every metric of METRICS that the run has (its evaluation files may lack some)."""
    values = dict(run.evaluation)
    values["normalised_score"] = float(normalise(final_return(run, final_fraction), run))
    for name, (plus, minus) in DERIVED.items():
        if plus in values and minus in values:
            values[name] = values[plus] - values[minus]
    return {k: v for k, v in values.items() if np.isfinite(v)}


def samples(runs: list[Run], values: dict, metric: str, method: str, scenarios: list[str]) -> list[np.ndarray]:
    """Per scenario, the metric's values over the method's seeds (seed order)."""
    return [np.array([values[id(r)][metric] for r in sorted(runs, key=lambda r: r.seed)
                      if r.method == method and r.env == env and metric in values[id(r)]]) for env in scenarios]


# ---------------------------------------------------------------- statistics


def iqm(scores: np.ndarray) -> np.ndarray:
    """(reps, 1) IQM of each (seeds, scenarios) sample of a (reps, seeds, scenarios) array."""
    return stats.trim_mean(scores.reshape(len(scores), -1), 0.25, axis=1)[:, None]


def iqm_interval(cells: list[np.ndarray], reps: int, seed: int) -> tuple[float, float, float] | None:
    """IQM and its 95% stratified-bootstrap CI over scenarios x seeds; None without values, or with unequal
    seed counts across scenarios (the stratified bootstrap needs a seeds x scenarios table)."""
    if not cells or any(len(c) == 0 for c in cells) or len({len(c) for c in cells}) > 1:
        return None
    table = np.stack(cells, axis=1)
    np.random.seed(seed)
    low, high = np.percentile(aggregate.stratified_bootstrap([table], iqm, reps)[:, 0], [2.5, 97.5])
    return float(iqm(table[None])[0, 0]), float(low), float(high)


def stratified_permutation_p(x: list[np.ndarray], y: list[np.ndarray], reps: int, seed: int) -> float:
    """Two-sided p-value of the difference of the means of x and y over all their values, under label
    permutations within each scenario (Monte Carlo, with the +1 correction)."""
    pairs = [(a, b) for a, b in zip(x, y) if len(a) and len(b)]
    if not pairs or sum(len(a) + len(b) for a, b in pairs) < 4:
        return float("nan")
    rng = np.random.default_rng(seed)
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
    """Seeds per method at which a two-sample t-test detects the observed difference with the given power;
    None if the difference is 0 or it needs more than ``most``."""
    spread = np.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2) if len(x) > 1 and len(y) > 1 else np.nan
    if not np.isfinite(spread) or spread == 0 or x.mean() == y.mean():
        return None
    effect = abs(x.mean() - y.mean()) / spread
    for n in range(2, most + 1):
        df = 2 * n - 2
        critical = stats.t.ppf(1 - alpha / 2, df)
        shift = effect * np.sqrt(n / 2)
        if stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift) >= power:
            return n
    return None


# ---------------------------------------------------------------- tables


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def p_text(p: float) -> str:
    return "p<0.001" if np.isfinite(p) and p < 0.001 else f"p={fmt_p(p)}"


def metric_table(runs: list[Run], values: dict, scenarios: list[str], methods: list[str], others: list[str],
                 head: list[str], args: Args) -> list[str]:
    """One table: each metric's IQM [CI] per method and the p-values of the reference against the others."""
    across = len(scenarios) > 1
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, label, _ in METRICS:
        cells = []
        for method in methods:
            found = samples(runs, values, metric, method, scenarios)
            found = [c for c, env in zip(found, scenarios) if any(r.method == method and r.env == env for r in runs)]
            estimate = iqm_interval(found, args.reps, args.seed)
            cells.append("n/a" if estimate is None else f"{estimate[0]:.3f} [{estimate[1]:.3f}, {estimate[2]:.3f}]")
        if all(c == "n/a" for c in cells):
            continue
        for other in others:
            x = samples(runs, values, metric, args.reference, scenarios)
            y = samples(runs, values, metric, other, scenarios)
            if across:
                p = stratified_permutation_p(x, y, args.reps, args.seed)
            else:
                p = welch_p_value(x[0], y[0])
            cells.append(fmt_p(p))
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines


def verdict(runs: list[Run], values: dict, metric: str, other: str, direction: str, scenarios: list[str],
            args: Args) -> str:
    x = samples(runs, values, metric, args.reference, scenarios)
    y = samples(runs, values, metric, other, scenarios)
    if not any(len(a) and len(b) for a, b in zip(x, y)):
        return "not run"
    if len(scenarios) > 1:
        p = stratified_permutation_p(x, y, args.reps, args.seed)
    else:
        p = welch_p_value(x[0], y[0])
    pooled_x = np.concatenate([a for a, b in zip(x, y) if len(a) and len(b)])
    pooled_y = np.concatenate([b for a, b in zip(x, y) if len(a) and len(b)])
    higher = pooled_x.mean() > pooled_y.mean()
    n = f"n={len(pooled_x)} vs {len(pooled_y)}"
    if not np.isfinite(p):
        return f"not settled (too few values, {n})"
    if direction == "not_worse":
        return (f"yes ({p_text(p)}, {n})" if higher or p >= args.alpha else f"**no**: lower ({p_text(p)}, {n})")
    if p < args.alpha:
        return f"**yes** ({p_text(p)}, {n})" if higher else f"**no**: reversed ({p_text(p)}, {n})"
    needed = seeds_for_power(pooled_x, pooled_y, args.alpha) if len(scenarios) == 1 else None
    power = f"; ~{needed} seeds each for 80% power" if needed else ""
    leaning = "" if higher else ", leaning reversed"  # more seeds would then settle the opposite of the claim
    return f"not settled{leaning} ({p_text(p)}, {n}{power})"


def complete_runs(runs: list[Run], reference: str) -> tuple[list[Run], str]:
    """The runs that the statistics across scenarios use, and a sentence naming what they leave out: a method's
    runs on a scenario count once it has all its seeds there (as many as on any scenario), and the reference's
    too where the reference ran, so that a scenario still in progress neither skews a method's IQM with a seed or
    two nor compares the reference over other scenarios than the method it is tested against."""
    def seeds(method, env):
        return {r.seed for r in runs if r.method == method and r.env == env}

    most = {m: max(len(seeds(m, r.env)) for r in runs if r.method == m) for m in {r.method for r in runs}}

    def complete(method, env):
        return len(seeds(method, env)) == most[method]

    kept, left = [], {}
    for r in runs:
        if complete(r.method, r.env) and (not seeds(reference, r.env) or complete(reference, r.env)):
            kept.append(r)
        else:
            left.setdefault(short_name(r.env), set()).add(r.method)
    if not left:
        return kept, ""
    pairs = "; ".join(f"{', '.join(sorted(methods))} on {env}" for env, methods in sorted(left.items()))
    return kept, (f"Left out of the statistics across scenarios until the method (and {reference}) has all its "
                  f"seeds there: {pairs}.")


def report(runs: list[Run], args: Args, figures_link: str) -> list[str]:
    values = {id(r): run_values(r, args.final_fraction) for r in runs}
    methods = aggregate.ordered_methods((r.method for r in runs), args.baseline)
    scenarios = sorted({r.env for r in runs})
    per_method = "; ".join(f"{m} {len([r for r in runs if r.method == m])} (seeds "
                           f"{', '.join(map(str, sorted({r.seed for r in runs if r.method == m})))})" for m in methods)
    lines = [f"{len(runs)} runs on {', '.join(map(short_name, scenarios))}: {per_method}. Each cell: IQM [95% stratified-bootstrap CI] over seeds (per scenario) "
             f"or scenarios x seeds (across). p: two-sided, {args.reference} against the column's method: Welch's "
             f"t-test over seeds per scenario, a stratified permutation test of the mean difference across "
             f"scenarios ({args.reps} permutations).", ""]
    for name, part_scenarios, part_methods, part_seeds in figure_parts(args, runs):
        lines += [f"Figures of {', '.join(part_methods)} on {', '.join(map(short_name, part_scenarios))}, seeds "
                  f"{', '.join(map(str, part_seeds))} (eval/aggregate.py): `{figures_link}/{name}/`.", ""]
    budgets = {}
    for r in runs:
        budgets.setdefault(short_name(r.env), set()).add(r.total_timesteps)
    lines += ["Budgets (steps): " + ", ".join(f"{env} {'/'.join(f'{b:,}' for b in sorted(b))}"
                                             for env, b in budgets.items()) + ".", ""]
    across_runs, in_progress = complete_runs(runs, args.reference)
    across_scenarios = [env for env in scenarios if any(r.env == env for r in across_runs)]
    for env in [*scenarios, ALL] if len(scenarios) > 1 else scenarios:
        where, table_runs = (across_scenarios, across_runs) if env == ALL else ([env], runs)
        present = [m for m in methods if any(r.method == m and r.env in where for r in table_runs)]
        counts = {m: len({r.env for r in table_runs if r.method == m and r.env in where}) for m in present}
        others = [m for m in present if m != args.reference] if args.reference in present else []
        head = ["metric", *(m if env != ALL or counts[m] == len(where) else f"{m} ({counts[m]} scenarios)"
                            for m in present), *(f"p vs {m}" for m in others)]
        lines += [f"#### {'All scenarios' if env == ALL else short_name(env)}", ""]
        if env == ALL and in_progress:
            lines += [in_progress, ""]
        lines += metric_table(table_runs, values, where, present, others, head, args) + [""]
    lines += ["#### The paper's claims, here", "",
              f"Verdict of the test in the claimed direction at alpha {args.alpha}; \"not settled\" gives the seeds "
              "per method that the observed difference would need for 80% power; \"leaning reversed\": the observed "
              "difference is the opposite of the claim's." + (
                  f" The last column: {in_progress[0].lower()}{in_progress[1:]}" if in_progress else ""), ""]
    across = len(scenarios) > 1
    head = ["claim", *map(short_name, scenarios), *([ALL] if across else [])]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for claim, metric, other, direction in CLAIMS:
        cells = [verdict(runs, values, metric, other, direction, [env], args) for env in scenarios]
        if across:
            cells.append(verdict(across_runs, values, metric, other, direction, across_scenarios, args))
        lines.append("| " + " | ".join([claim, *cells]) + " |")
    return lines


# ---------------------------------------------------------------- the README block


def markers(results: str) -> tuple[str, str]:
    return f"<!-- report:{results}:begin -->", f"<!-- report:{results}:end -->"


def replace_block(text: str, block: list[str], results: str, readme: str) -> str:
    begin, end = markers(results)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"error: {readme} needs one line '{begin}' and, after it, one line '{end}' "
                         "around the block to regenerate")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + begin + "\n" + "\n".join(block) + "\n" + end + tail


def figure_parts(args: Args, runs: list[Run]) -> list[tuple[str, list[str], list[str], list[int]]]:
    """(name, scenarios, methods, seeds) of each set of figures: all methods, and the reference with the
    baseline, each on the scenarios where all its methods have runs in the tables across scenarios
    (complete_runs), over the seeds every method has on them (eval/aggregate.py needs equal seeds)."""
    methods = sorted({r.method for r in runs})
    kept, _ = complete_runs(runs, args.reference)
    pair = [m for m in (args.baseline, args.reference) if m in methods]
    parts = [("all_methods", methods)] + ([(f"{args.reference}_vs_{args.baseline}", pair)] if len(pair) == 2 else [])
    sets = []
    for name, part_methods in parts:
        part_scenarios = sorted(env for env in {r.env for r in kept}
                                if {r.method for r in kept if r.env == env} >= set(part_methods))
        if not part_scenarios or any(part_scenarios == scenarios for _, scenarios, _, _ in sets):
            continue
        seeds = set.intersection(*({r.seed for r in kept if r.env == env and r.method == m}
                                   for env in part_scenarios for m in part_methods))
        if seeds:
            sets.append((name, part_scenarios, part_methods, sorted(seeds)))
    return sets


def draw_figures(args: Args, runs: list[Run], figures: Path) -> None:
    """eval/aggregate.py's figures for each set of figure_parts."""
    for name, scenarios, methods, seeds in figure_parts(args, runs):
        print(f"figures of {name} -> {figures / name}", flush=True)
        aggregate.main(aggregate.Args(runs_dir=args.results, out=str(figures / name), reps=args.reps,
                                      baseline=args.baseline, reference=args.reference, seed=args.seed,
                                      final_fraction=args.final_fraction, scenarios=scenarios,
                                      methods=methods, seeds=seeds))


def main(args: Args) -> None:
    if args.reps < 1 or not 0 < args.alpha < 1 or not 0 < args.final_fraction <= 1:
        raise SystemExit("error: --reps must be >= 1, --alpha in (0, 1), --final-fraction in (0, 1]")
    if (args.readme is None) == (args.check is None):
        raise SystemExit("error: give one of --readme README.md (write) or --check README.md (compare)")
    readme = Path(args.readme or args.check)
    if not readme.is_file():
        raise SystemExit(f"error: {readme} is not a file")
    text = readme.read_text()
    replace_block(text, [], args.results, str(readme))  # refuse a README without markers before any work
    figures = Path(args.figures or Path("docs") / "results" / Path(args.results).name)
    if args.readme:
        aggregate.check_output_folder(figures, "--figures")
    runs = aggregate.load_runs(Path(args.results), args.final_fraction)
    block = [f"<!-- generated by: python eval/report.py {args.results} --readme {readme.name}; do not edit by hand -->",
             "", *report(runs, args, figures.as_posix())]
    new_text = replace_block(text, block, args.results, str(readme))
    if args.check:
        if new_text != text:
            sys.exit(f"error: the results block of {readme} is not the output of eval/report.py {args.results}; "
                     f"regenerate it with --readme {readme}")
        print(f"{readme}: its results block is the output of eval/report.py {args.results}")
        return
    draw_figures(args, runs, figures)
    readme.write_text(new_text)
    print(f"wrote the results block of {readme} and the figures in {figures}/")


if __name__ == "__main__":
    main(tyro.cli(Args))
