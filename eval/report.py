"""The results section of the docs, regenerated from a study's run records alone.

    python eval/report.py results/paper --readme README.md     # rewrite the README's block, draw the figures
    python eval/report.py results/paper --check README.md      # exit 1 if the README's block is not this output

Reads every complete run under RESULTS (records of eval/record.py, or run folders) and writes a markdown
block (eval/tables.py): per scenario, then across scenarios, each metric as IQM [95% CI] per method with the
two-sided p-value of --reference (CAMAL) against each other method, and a table of the paper's claims with a
verdict per scenario. The block replaces the lines between ``<!-- report:RESULTS:begin -->`` and
``<!-- report:RESULTS:end -->`` of the README (RESULTS as given on the command line). The figures of
eval/aggregate.py (eval/plots.py) go to --figures: one set over the scenarios where every method ran, and one
for the reference and the baseline over all scenarios. The statistics: docs/method.md, Statistics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pandas as pd
import tyro

from eval import estimates, plots, selection, tables
from eval.runs import InputError, Run, check_output_folder, load_runs, ordered_methods


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
    """seed of the bootstraps and permutations (a fresh random state for each one, so every cell is
    reproducible alone)"""


def print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def draw_figures(runs: list[Run], options: tables.Options, figures: Path) -> None:
    """eval/aggregate.py's figures and aggregate.csv for each set of tables.figure_parts."""
    for name, scenarios, methods, seeds in tables.figure_parts(options, runs):
        print(f"figures of {name} -> {figures / name}", flush=True)
        part = selection.select_runs(runs, scenarios, methods, seeds)
        aggregate = estimates.aggregate_runs(part, estimates.Options(
            final_fraction=options.final_fraction, reps=options.reps, baseline=options.baseline,
            reference=options.reference, seed=options.seed))
        out = figures / name
        out.mkdir(parents=True, exist_ok=True)
        colors = plots.method_colors(ordered_methods(methods, options.baseline))
        plots.draw_figures(out, aggregate, colors, options.baseline, options.reference, options.final_fraction)
        pd.DataFrame(aggregate.rows + aggregate.tests, columns=estimates.COLUMNS).to_csv(out / "aggregate.csv",
                                                                                       index=False)


def main(args: Args) -> None:
    if args.reps < 1 or not 0 < args.alpha < 1 or not 0 < args.final_fraction <= 1:
        raise SystemExit("error: --reps must be >= 1, --alpha in (0, 1), --final-fraction in (0, 1]")
    if (args.readme is None) == (args.check is None):
        raise SystemExit("error: give one of --readme README.md (write) or --check README.md (compare)")
    readme = Path(args.readme or args.check)
    if not readme.is_file():
        raise SystemExit(f"error: {readme} is not a file")
    options = tables.Options(reference=args.reference, baseline=args.baseline, reps=args.reps, alpha=args.alpha,
                             final_fraction=args.final_fraction, seed=args.seed)
    figures = Path(args.figures or Path("docs") / "results" / Path(args.results).name)
    try:
        text = readme.read_text()
        tables.replace_block(text, [], args.results, str(readme))  # refuse a README without markers before any work
        if args.readme:
            check_output_folder(figures, "--figures")
        print(f"reading the runs under {args.results} ...", flush=True)
        runs = load_runs(Path(args.results), args.final_fraction, warn=print_warning)
        block = [f"<!-- generated by: python eval/report.py {args.results} --readme {readme.name}; do not edit by "
                 "hand -->", "", *tables.results_block(runs, options, figures.as_posix())]
        new_text = tables.replace_block(text, block, args.results, str(readme))
        if args.check:
            if new_text != text:
                sys.exit(f"error: the results block of {readme} is not the output of eval/report.py "
                         f"{args.results}; regenerate it with --readme {readme}")
            print(f"{readme}: its results block is the output of eval/report.py {args.results}")
            return
        draw_figures(runs, options, figures)
    except InputError as error:
        raise SystemExit(f"error: {error}")
    readme.write_text(new_text)
    print(f"wrote the results block of {readme} and the figures in {figures}/")


if __name__ == "__main__":
    main(tyro.cli(Args))
