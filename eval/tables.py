"""A study's results as a markdown block: each metric per scenario and across scenarios, as IQM [95% CI] per
method with the p-value of the reference against each other method, and the paper's claims with a verdict
per scenario (eval/report.py writes it into markdown files; docs/method.md, Statistics, gives the protocol).

- per scenario: IQM over seeds with a 95% percentile bootstrap CI (rliable's stratified bootstrap with one
  task); Welch's t-test over seeds, two-sided;
- across scenarios: IQM over scenarios x seeds with the stratified bootstrap CI, each method over the
  scenarios it ran; a stratified permutation test of the mean difference (method labels shuffled within
  each scenario), two-sided, over the scenarios both methods ran;
- a claim holds on a scenario when its test gives p < alpha in the claimed direction; "not settled"
  otherwise, with the seeds per method that the observed effect would need for 80% power (two-sample
  t-test, statsmodels). p-values are per test, not corrected for the number of tests.

A study of classifier runs (eval/runs.py: the architecture in the scenario's role) gets its own block
(``classifier_report``, CLASSIFIER_METRICS per split and CLASSIFIER_CLAIMS) between its own markers
(``block_name``): per architecture, Welch's and the paired t-test over seeds (same seed: same initialisation and
data order), the verdicts by the paired test; across architectures the stratified permutation test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.run_folder import ALIGNMENT
from eval.runs import CLASSIFIER, RL, InputError, Run, final_return, normalise, ordered_methods
from eval.stats import (iqm_interval, paired_p_value, pairs_for_power, seeds_for_power, stratified_permutation_p,
                        welch_p_value)
from scenarios import short_name

DELETION_INSERTION = (
    # the faithfulness rows both paradigms share: (key, label, the better direction)
    ("deletion_auc", "deletion AUC, map order", -1),
    ("deletion_auc_random", "deletion AUC, random order", 0),
    ("deletion_gain", "deletion gain (random order - map order)", +1),
    ("insertion_auc", "insertion AUC, map order", +1),
    ("insertion_auc_random", "insertion AUC, random order", 0),
    ("insertion_gain", "insertion gain (map order - random order)", +1),
)
METRICS = (
    # (key, label, the better direction: +1 higher, -1 lower, 0 a control)
    ("normalised_score", "normalised score", +1),
    ("relevance_mass", "relevance mass", +1),
    ("relevance_mass_chance", "chance level of mass, rank and pointing (target's share of the frame)", 0),
    ("relevance_rank", "relevance rank", +1),
    ("pointing_game", "pointing game", +1),
    *DELETION_INSERTION,
    ("occlusion_drop", "occlusion drop of pi(a*), target", +1),
    ("occlusion_drop_random", "occlusion drop of pi(a*), random region", 0),
    ("occlusion_gain", "occlusion drop, target - random region", +1),
    ("occlusion_drop_dilated", "occlusion drop of pi(a*), target dilated to the Grad-CAM cell size", +1),
    ("occlusion_drop_dilated_random", "occlusion drop of pi(a*), random region of the dilated target's area", 0),
    ("occlusion_gain_dilated", "occlusion drop, dilated target - random region", +1),
    ("shift_return_ratio", "return under background shift / without", +1),
    ("shift_action_agreement", "action agreement under background shift", +1),
)
DERIVED = {
    "deletion_gain": ("deletion_auc_random", "deletion_auc"),
    "insertion_gain": ("insertion_auc", "insertion_auc_random"),
    "occlusion_gain": ("occlusion_drop", "occlusion_drop_random"),
    "occlusion_gain_dilated": ("occlusion_drop_dilated", "occlusion_drop_dilated_random"),
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
    ("alignment needs the true masks (vs uniform masks)", "relevance_mass", "camal-uniform", "greater"),
    ("alignment gain over RRR", "relevance_mass", "rrr", "greater"),
    ("alignment needs a mask-specific loss (vs the entropy regulariser)", "relevance_mass", "entropy", "greater"),
    ("return under background shift holds better than vanilla's", "shift_return_ratio", "vanilla", "greater"),
    ("target occlusion matters more than for vanilla", "occlusion_gain", "vanilla", "greater"),
    ("target occlusion, dilated to the Grad-CAM cell size, matters more than for vanilla", "occlusion_gain_dilated",
     "vanilla", "greater"),
)
ALL = "all scenarios"

CLASSIFIER_METRICS = (
    # (metric of a split of classifier_eval.json, label, the better direction: +1 higher, -1 lower, 0 a control)
    ("accuracy", "accuracy", +1),
    ("relevance_mass", "relevance mass", +1),
    ("relevance_mass_chance", "chance level of mass (the mask's share of the image)", 0),
    ("relevance_rank", "relevance rank", +1),
    ("relevance_rank_chance", "chance level of rank", 0),
    ("pointing_game", "pointing game", +1),
    ("pointing_game_chance", "chance level of pointing", 0),
    *DELETION_INSERTION,
    ("occlusion_drop", "occlusion drop of p(predicted class), object", +1),
    ("occlusion_drop_random", "occlusion drop of p(predicted class), random region", 0),
    ("occlusion_gain", "occlusion drop, object - random region", +1),
    ("images_per_s", "images/s of the forward pass (inference cost)", +1),
)
SPLIT_ORDER = ("val", "test_balanced", "test_shifted")
"""the built-in data set's splits, in the tables' order (others follow as the runs list them)"""

CLASSIFIER_CLAIMS = (
    # (claim, SPLIT_metric, the method compared with, direction, give the relative change)
    ("alignment gain over vanilla (relevance mass, test_balanced)", "test_balanced_relevance_mass", "vanilla",
     "greater", False),
    ("faithfulness gain over vanilla (deletion, test_balanced)", "test_balanced_deletion_gain", "vanilla", "greater",
     False),
    ("faithfulness gain over vanilla (insertion, test_balanced)", "test_balanced_insertion_gain", "vanilla",
     "greater", False),
    ("faithfulness gain over RRR (deletion, test_balanced; the paper: over 35%)", "test_balanced_deletion_gain",
     "rrr", "greater", True),
    ("faithfulness gain over RRR (insertion, test_balanced; the paper: over 35%)", "test_balanced_insertion_gain",
     "rrr", "greater", True),
    ("accuracy in distribution (val) not worse than vanilla", "val_accuracy", "vanilla", "not_worse", False),
    ("accuracy on test_balanced better than vanilla", "test_balanced_accuracy", "vanilla", "greater", False),
    ("accuracy on test_shifted better than vanilla", "test_shifted_accuracy", "vanilla", "greater", False),
    ("alignment needs the true masks (vs random masks)", "test_balanced_relevance_mass", "camal-random", "greater",
     False),
    ("alignment needs the true masks (vs uniform masks)", "test_balanced_relevance_mass", "camal-uniform", "greater",
     False),
    ("a generic entropy regulariser does not give the gain (vs entropy)", "test_balanced_relevance_mass", "entropy",
     "greater", False),
    ("no inference cost (images/s on val not lower than vanilla's)", "val_images_per_s", "vanilla", "not_worse",
     False),
)
ALL_ARCHITECTURES = "all architectures"
DL = "dl"
"""the marker name's suffix of a classifier study's blocks"""


@dataclass
class Options:
    """How the report's statistics are computed (eval/report.py's flags of the same names)."""

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
    """seed of the bootstraps and permutations (a fresh random state for each one, so every cell is
    reproducible alone)"""


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


def paired_samples(runs: list[Run], values: dict, metric: str, x_method: str, y_method: str,
                   env: str) -> tuple[np.ndarray, np.ndarray]:
    """The metric's values of two methods on one scenario over the seeds both have it on, paired by seed."""
    def by_seed(method):
        return {r.seed: values[id(r)][metric] for r in runs
                if r.method == method and r.env == env and metric in values[id(r)]}

    x, y = by_seed(x_method), by_seed(y_method)
    common = sorted(x.keys() & y.keys())
    return np.array([x[s] for s in common]), np.array([y[s] for s in common])


# ---------------------------------------------------------------- tables


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def p_text(p: float) -> str:
    return "p<0.001" if np.isfinite(p) and p < 0.001 else f"p={fmt_p(p)}"


def metric_table(runs: list[Run], values: dict, scenarios: list[str], methods: list[str], others: list[str],
                 head: list[str], options: Options, metrics=METRICS, paired: bool = False) -> list[str]:
    """One table: each metric's IQM [CI] per method and the p-values of the reference against the others (on one
    scenario with ``paired``: Welch's, then the paired t-test over the seeds both have)."""
    across = len(scenarios) > 1
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, label, _ in metrics:
        cells = []
        for method in methods:
            found = samples(runs, values, metric, method, scenarios)
            found = [c for c, env in zip(found, scenarios) if any(r.method == method and r.env == env for r in runs)]
            estimate = iqm_interval(found, options.reps, np.random.RandomState(options.seed))
            cells.append("n/a" if estimate is None else f"{estimate[0]:.3f} [{estimate[1]:.3f}, {estimate[2]:.3f}]")
        if all(c == "n/a" for c in cells):
            continue
        for other in others:
            x = samples(runs, values, metric, options.reference, scenarios)
            y = samples(runs, values, metric, other, scenarios)
            if across:
                p = stratified_permutation_p(x, y, options.reps, np.random.default_rng(options.seed))
            else:
                p = welch_p_value(x[0], y[0])
            cells.append(fmt_p(p))
            if paired and not across:
                cells.append(fmt_p(paired_p_value(*paired_samples(runs, values, metric, options.reference, other,
                                                                  scenarios[0]))))
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines


def undefined_reason(metric: str) -> str:
    """Why a metric has no value on a run: alignment is NaN where every map is all zero (docs/method.md s.5);
    any other metric (e.g. the shift return ratio, NaN when the unshifted return is not above 0) is named only
    as NaN."""
    if any(metric == name or metric.endswith("_" + name) for name in ALIGNMENT):
        return "no frame with a non-zero map"
    return "NaN on every run"


VERDICT_WORDS = (
    "\"leaning reversed\": the observed difference is the opposite of the claim's; \"not run\": one of the two "
    "methods has no run there; \"not evaluated\": their runs there lack the metric; \"undefined for M\": M's "
    "runs there have no value of it (an alignment metric of maps that are all zero on every frame).")


def verdict(runs: list[Run], values: dict, metric: str, other: str, direction: str, scenarios: list[str],
            options: Options, paired: bool = False, relative: bool = False) -> str:
    """The claim's verdict over ``scenarios``: on one, Welch's t-test (``paired``: the paired t-test over the
    seeds both methods have), on several the stratified permutation test; ``relative`` puts the relative change
    of the mean first."""
    x = samples(runs, values, metric, options.reference, scenarios)
    y = samples(runs, values, metric, other, scenarios)
    if not any(len(a) and len(b) for a, b in zip(x, y)):
        both_ran = any({options.reference, other} <= {r.method for r in runs if r.env == env} for env in scenarios)
        if not both_ran:
            return "not run"
        undefined = [m for m in (options.reference, other)
                     if any(r.method == m and r.env in scenarios and metric in r.undefined for r in runs)]
        if undefined:
            return f"undefined for {' and '.join(undefined)}: {undefined_reason(metric)}"
        return "not evaluated"
    one_paired = paired and len(scenarios) == 1
    if one_paired:
        x, y = map(lambda a: [a], paired_samples(runs, values, metric, options.reference, other, scenarios[0]))
        p = paired_p_value(x[0], y[0])
    elif len(scenarios) > 1:
        p = stratified_permutation_p(x, y, options.reps, np.random.default_rng(options.seed))
    else:
        p = welch_p_value(x[0], y[0])
    pooled_x = np.concatenate([a for a, b in zip(x, y) if len(a) and len(b)] or [np.zeros(0)])
    pooled_y = np.concatenate([b for a, b in zip(x, y) if len(a) and len(b)] or [np.zeros(0)])
    higher = len(pooled_x) > 0 and pooled_x.mean() > pooled_y.mean()
    n = f"n={len(pooled_x)} pairs" if one_paired else f"n={len(pooled_x)} vs {len(pooled_y)}"
    if relative and len(pooled_x) and pooled_y.mean() != 0:
        n = f"{(pooled_x.mean() - pooled_y.mean()) / abs(pooled_y.mean()):+.0%} relative, {n}"
    if not np.isfinite(p):
        return f"not settled (too few values, {n})"
    if direction == "not_worse":
        return (f"yes ({p_text(p)}, {n})" if higher or p >= options.alpha else f"**no**: lower ({p_text(p)}, {n})")
    if p < options.alpha:
        return f"**yes** ({p_text(p)}, {n})" if higher else f"**no**: reversed ({p_text(p)}, {n})"
    if one_paired:
        needed = pairs_for_power(pooled_x - pooled_y, options.alpha)
    else:
        needed = seeds_for_power(pooled_x, pooled_y, options.alpha) if len(scenarios) == 1 else None
    each = "paired seeds" if one_paired else "seeds each"
    power = f"; ~{needed} {each} for 80% power" if needed else ""
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


@dataclass
class Report:
    """A study's tables, computed once, rendered as the results block or as its headline."""

    introduction: list[str]
    """the block's first paragraphs: runs, figures, budgets"""
    sections: list[tuple[str, list[str]]]
    """(heading, lines) of each metric table: per scenario, then across scenarios"""
    claims_introduction: str
    claim_columns: list[str]
    claims: list[tuple[str, list[str]]]
    """(claim, verdict per column)"""
    unit: str = "scenario"
    """what a column of the claims is: a scenario, or a classifier's architecture"""
    folded: bool = False
    """each table but the last (across) folded under its heading: a classifier's tables are long (every metric on
    every split), so the page opens on the tables across architectures and the claims"""


def metric_section(runs: list[Run], values: dict, where: list[str], methods: list[str], across: bool,
                   options: Options, metrics=METRICS, paired: bool = False, unit: str = "scenarios") -> list[str]:
    """The metric table of the methods over the scenarios ``where`` (``paired``: on one scenario, a column of
    Welch's and one of the paired t-test per compared method)."""
    present = [m for m in methods if any(r.method == m and r.env in where for r in runs)]
    counts = {m: len({r.env for r in runs if r.method == m and r.env in where}) for m in present}
    others = [m for m in present if m != options.reference] if options.reference in present else []
    tests = ["Welch p vs {}", "paired p vs {}"] if paired and not across else ["p vs {}"]
    head = ["metric", *(m if not across or counts[m] == len(where) else f"{m} ({counts[m]} {unit})"
                        for m in present), *(test.format(m) for m in others for test in tests)]
    return metric_table(runs, values, where, present, others, head, options, metrics, paired)


def study_report(runs: list[Run], options: Options, figures_link: str) -> Report:
    if runs and runs[0].paradigm == CLASSIFIER:
        return classifier_report(runs, options, figures_link)
    values = {id(r): run_values(r, options.final_fraction) for r in runs}
    methods = ordered_methods((r.method for r in runs), options.baseline)
    scenarios = sorted({r.env for r in runs})
    per_method = "; ".join(f"{m} {len([r for r in runs if r.method == m])} (seeds "
                           f"{', '.join(map(str, sorted({r.seed for r in runs if r.method == m})))})" for m in methods)
    lines = [f"{len(runs)} runs on {', '.join(map(short_name, scenarios))}: {per_method}. Each cell: IQM [95% "
             f"stratified-bootstrap CI] over seeds (per scenario) or scenarios x seeds (across). p: two-sided, "
             f"{options.reference} against the column's method: Welch's t-test over seeds per scenario, a stratified "
             f"permutation test of the mean difference across scenarios ({options.reps} permutations).", ""]
    for name, part_scenarios, part_methods, part_seeds in figure_parts(options, runs):
        lines += [f"Figures of {', '.join(part_methods)} on {', '.join(map(short_name, part_scenarios))}, seeds "
                  f"{', '.join(map(str, part_seeds))} (eval/aggregate.py): `{figures_link}/{name}/`.", ""]
    budgets = {}
    for r in runs:
        budgets.setdefault(short_name(r.env), set()).add(r.total_timesteps)
    lines += ["Budgets (steps): " + ", ".join(f"{env} {'/'.join(f'{b:,}' for b in sorted(b))}"
                                             for env, b in budgets.items()) + "."]
    across_runs, in_progress = complete_runs(runs, options.reference)
    across_scenarios = [env for env in scenarios if any(r.env == env for r in across_runs)]
    sections = [(short_name(env), metric_section(runs, values, [env], methods, False, options)) for env in scenarios]
    across = len(scenarios) > 1
    if across:
        sections.append(("All scenarios", ([in_progress, ""] if in_progress else [])
                         + metric_section(across_runs, values, across_scenarios, methods, True, options)))
    claims_introduction = (
        f"Verdict of the test in the claimed direction at alpha {options.alpha}; \"not settled\" gives the seeds "
        "per method that the observed difference would need for 80% power; " + VERDICT_WORDS
        + (f" The last column: {in_progress[0].lower()}{in_progress[1:]}" if in_progress else ""))
    claims = []
    for claim, metric, other, direction in CLAIMS:
        cells = [verdict(runs, values, metric, other, direction, [env], options) for env in scenarios]
        if across:
            cells.append(verdict(across_runs, values, metric, other, direction, across_scenarios, options))
        claims.append((claim, cells))
    return Report(lines, sections, claims_introduction, [*map(short_name, scenarios), *([ALL] if across else [])],
                  claims)


def claims_table(columns: list[str], claims: list[tuple[str, list[str]]]) -> list[str]:
    head = ["claim", *columns]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join([claim, *cells]) + " |" for claim, cells in claims)]


def full_block(report: Report) -> list[str]:
    """The results block: every table and every verdict."""
    lines = list(report.introduction) + [""]
    for i, (heading, table) in enumerate(report.sections):
        if report.folded and i < len(report.sections) - 1:
            table = [f"<details><summary>every metric on {heading}</summary>", "", *table, "", "</details>"]
        lines += [f"#### {heading}", "", *table, ""]
    return lines + ["#### The paper's claims, here", "", report.claims_introduction, "",
                    *claims_table(report.claim_columns, report.claims)]


def headline_block(report: Report, results_link: str) -> list[str]:
    """The headline: the table across scenarios (the one scenario's, in a study of one) and the claims' verdicts
    there, then a link to the full results."""
    heading, table = report.sections[-1]
    claims = [(claim, cells[-1:]) for claim, cells in report.claims]
    where = f"across {heading[len('All '):]}" if heading.startswith("All ") else f"on {heading}"
    unit = report.unit
    return [f"#### {heading}", "", *table, "", f"#### The paper's claims, {where}", "",
            *claims_table(report.claim_columns[-1:], claims), "",
            f"Per {unit}, every metric, the claims {unit} by {unit} and the figures: "
            f"[{results_link}]({results_link})."]


def results_block(runs: list[Run], options: Options, figures_link: str) -> list[str]:
    """The markdown lines of the results block (without its markers and generated-by line)."""
    return full_block(study_report(runs, options, figures_link))


# ---------------------------------------------------------------- a study of classifiers


def ordered_splits(runs: list[Run]) -> list[str]:
    """The runs' evaluated splits: those of SPLIT_ORDER first, then the others as the runs list them."""
    found = list(dict.fromkeys(split for r in runs for split in r.splits))
    return [s for s in SPLIT_ORDER if s in found] + [s for s in found if s not in SPLIT_ORDER]


def classifier_run_values(run: Run) -> dict[str, float]:
    """A classifier run's ``SPLIT_metric`` values, with each split's gains (DERIVED)."""
    values = dict(run.evaluation)
    for split in run.splits:
        for name, (plus, minus) in DERIVED.items():
            if f"{split}_{plus}" in values and f"{split}_{minus}" in values:
                values[f"{split}_{name}"] = values[f"{split}_{plus}"] - values[f"{split}_{minus}"]
    return {k: v for k, v in values.items() if np.isfinite(v)}


def classifier_metrics(splits: list[str]) -> list[tuple[str, str, int]]:
    """The rows of a classifier table: every metric of CLASSIFIER_METRICS on each split."""
    return [(f"{split}_{metric}", f"{split}: {label}", direction) for split in splits
            for metric, label, direction in CLASSIFIER_METRICS]


def classifier_report(runs: list[Run], options: Options, figures_link: str) -> Report:
    """The tables and claims of a study of classifier runs, per architecture and across architectures."""
    values = {id(r): classifier_run_values(r) for r in runs}
    methods = ordered_methods((r.method for r in runs), options.baseline)
    architectures = sorted({r.env for r in runs})
    splits = ordered_splits(runs)
    metrics = classifier_metrics(splits)
    per_method = "; ".join(f"{m} {len([r for r in runs if r.method == m])} (seeds "
                           f"{', '.join(map(str, sorted({r.seed for r in runs if r.method == m})))})" for m in methods)
    lines = [f"{len(runs)} classifier runs on {', '.join(architectures)}: {per_method}. Each cell: IQM [95% "
             f"stratified-bootstrap CI] over seeds (per architecture) or architectures x seeds (across), of the "
             f"metrics of classifier_eval.json on each split ({', '.join(splits)}) and their gains (deletion: random "
             f"order - map order; insertion: map order - random order; occlusion: object - random region). p: "
             f"two-sided, {options.reference} against the column's method: per architecture Welch's t-test and the "
             f"paired t-test over seeds (same seed: same initialisation and data order), across architectures a "
             f"stratified permutation test of the mean difference ({options.reps} permutations).", ""]
    for name, part_architectures, part_methods, part_seeds in figure_parts(options, runs):
        lines += [f"Figures of {', '.join(part_methods)} on {', '.join(part_architectures)}, seeds "
                  f"{', '.join(map(str, part_seeds))} (eval/aggregate.py): `{figures_link}/{name}/`.", ""]
    budgets = {}
    for r in runs:
        budgets.setdefault(r.env, set()).add(r.total_timesteps)
    lines += ["Budgets (epochs): " + ", ".join(f"{a} {'/'.join(map(str, sorted(b)))}" for a, b in budgets.items())
              + "."]
    across_runs, in_progress = complete_runs(runs, options.reference)
    in_progress = in_progress.replace("across scenarios", "across architectures")
    across_architectures = [a for a in architectures if any(r.env == a for r in across_runs)]
    sections = [(a, metric_section(runs, values, [a], methods, False, options, metrics, True, "architectures"))
                for a in architectures]
    across = len(architectures) > 1
    if across:
        sections.append(("All architectures", ([in_progress, ""] if in_progress else [])
                         + metric_section(across_runs, values, across_architectures, methods, True, options, metrics,
                                          True, "architectures")))
    claims_introduction = (
        f"Verdict of the test in the claimed direction at alpha {options.alpha}: per architecture the paired t-test "
        "over the seeds both methods ran, across architectures the stratified permutation test; \"not settled\" "
        "gives, per architecture, the seeds (pairs) that the observed mean difference would need for 80% power; "
        + VERDICT_WORDS + " \"relative\": the "
        f"difference of the means over the other method's mean, (mean {options.reference} - mean other) / |mean "
        "other|. Alignment and faithfulness are read on test_balanced (every class on every background, so a "
        "background shortcut does not pay); the inference cost is the forward pass's images/s on val, measured "
        "where each run was evaluated (comparable within a study evaluated on one kind of machine)."
        + (f" The last column: {in_progress[0].lower()}{in_progress[1:]}" if in_progress else ""))
    claims = []
    for claim, metric, other, direction, relative in CLASSIFIER_CLAIMS:
        cells = [verdict(runs, values, metric, other, direction, [a], options, paired=True, relative=relative)
                 for a in architectures]
        if across:
            cells.append(verdict(across_runs, values, metric, other, direction, across_architectures, options,
                                 relative=relative))
        claims.append((claim, cells))
    return Report(lines, sections, claims_introduction, [*architectures, *([ALL_ARCHITECTURES] if across else [])],
                  claims, unit="architecture", folded=across)


# ---------------------------------------------------------------- figures


def figure_parts(options: Options, runs: list[Run]) -> list[tuple[str, list[str], list[str], list[int]]]:
    """(name, scenarios, methods, seeds) of each set of figures: all methods, and the reference with the
    baseline, each on the scenarios where all its methods have runs in the tables across scenarios
    (complete_runs), over the seeds every method has on them (eval/aggregate.py needs equal seeds)."""
    methods = sorted({r.method for r in runs})
    kept, _ = complete_runs(runs, options.reference)
    pair = [m for m in (options.baseline, options.reference) if m in methods]
    parts = [("all_methods", methods)]
    if len(pair) == 2:
        parts.append((f"{options.reference}_vs_{options.baseline}", pair))
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


# ---------------------------------------------------------------- the markdown file


FULL, HEADLINE = "full", "headline"
"""the two blocks a markdown file can hold: the results block and its headline"""


def block_name(results: str, paradigm: str = RL) -> str:
    """The name in a study's markers: RESULTS as given to eval/report.py; a classifier study's ``RESULTS:dl``, so
    that its blocks have markers of their own (``<!-- report:RESULTS:dl:begin -->``, ...:dl:headline:...)."""
    return results if paradigm == RL else f"{results}:{DL}"


def markers(results: str, block: str = FULL) -> tuple[str, str]:
    """The begin and end lines of a block: ``<!-- report:RESULTS:begin -->`` (the results block) or
    ``<!-- report:RESULTS:headline:begin -->`` (its headline), RESULTS as given to eval/report.py."""
    name = results if block == FULL else f"{results}:{block}"
    return f"<!-- report:{name}:begin -->", f"<!-- report:{name}:end -->"


def marked_blocks(text: str, results: str, path: str) -> list[str]:
    """The blocks (FULL, HEADLINE) that a markdown file marks; InputError unless it marks at least one, each
    with one begin line and, after it, one end line, and neither inside the other."""
    found, spans = [], []
    for block, what in ((FULL, "results block"), (HEADLINE, "headline")):
        begin, end = markers(results, block)
        counts = (text.count(begin), text.count(end))
        if counts == (0, 0):
            continue
        if counts != (1, 1) or text.index(begin) > text.index(end):
            raise InputError(f"{path} needs one line '{begin}' and, after it, one line '{end}' around the {what} "
                             "to regenerate")
        found.append(block)
        spans.append((text.index(begin), text.index(end)))
    if not found:
        (begin, end), (headline_begin, headline_end) = markers(results), markers(results, HEADLINE)
        raise InputError(f"{path} needs one line '{begin}' and, after it, one line '{end}' around the results block "
                         f"to regenerate, or '{headline_begin}' and '{headline_end}' around its headline")
    if len(spans) == 2 and not (spans[0][1] < spans[1][0] or spans[1][1] < spans[0][0]):
        raise InputError(f"{path}: the headline's markers and the results block's must not enclose one another")
    return found


def replace_block(text: str, lines: list[str], results: str, block: str = FULL) -> str:
    """The text with the lines between the block's markers (marked_blocks checked them) replaced by ``lines``."""
    begin, end = markers(results, block)
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + begin + "\n" + "\n".join(lines) + "\n" + end + tail
