"""The results pages, regenerated from a study's run records alone.

    python eval/report.py results/paper --readme README.md docs/results.md   # rewrite the blocks, draw the figures
    python eval/report.py results/paper --check README.md docs/results.md    # exit 1 if a block is not this output

Reads every complete run under RESULTS (records of eval/record.py, or run folders) and writes markdown
(eval/tables.py). The results block, between ``<!-- report:RESULTS:begin -->`` and
``<!-- report:RESULTS:end -->`` of a file (RESULTS as given on the command line): per scenario, then across
scenarios, each metric as IQM [95% CI] per method with the two-sided p-values of --reference (CAMAL) against
each other method, and a table of the paper's claims with a verdict per scenario. Its headline, between
``<!-- report:RESULTS:headline:begin -->`` and ``<!-- report:RESULTS:headline:end -->``: the table across
scenarios, the claims' verdicts there, and a link to docs/results.md. Each file given must mark at least
one of the two. The figures of eval/aggregate.py (eval/plots.py) go to --figures: one set over the
scenarios where every method ran, and one for the reference and the baseline over all scenarios. The
statistics: docs/method.md, Statistics.

A study of classifier runs (agents/camal_classifier.py's records) gets the DL block instead (eval/tables.py's
classifier_report: per architecture and across architectures, every metric of classifier_eval.json per split,
Welch's and the paired t-test over seeds, the DL claims), between its own markers
``<!-- report:RESULTS:dl:begin -->`` and ``<!-- report:RESULTS:dl:end -->`` (headline:
``<!-- report:RESULTS:dl:headline:begin -->`` ...), so an RL block in the same file is left as it is.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pandas as pd
import tyro

from eval import estimates, plots, selection, tables
from eval.runs import InputError, Run, check_output_folder, load_runs, ordered_methods, study_paradigm


@dataclass
class Args:
    """Regenerate the results blocks of markdown files, and the figures, from a study's run records."""

    results: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RESULTS")] = "results/paper"
    """folder of the study's run records (eval/record.py) or run folders"""
    readme: Annotated[list[str] | None, tyro.conf.arg(metavar="FILE [FILE ...]")] = None
    """write the blocks into these markdown files (between their report markers for RESULTS) and draw the
    figures"""
    check: Annotated[list[str] | None, tyro.conf.arg(metavar="FILE [FILE ...]")] = None
    """compare the blocks of these markdown files with the output and exit 1 if one differs (nothing is
    written)"""
    figures: str | None = None
    """folder of the figures (None: docs/results/<name of RESULTS>)"""
    results_page: str = "docs/results.md"
    """the page holding the results block, that the headline links to (relative to the working folder)"""
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


def generated_blocks(text: str, path: Path, report: tables.Report, args: Args, block_name: str) -> str:
    """The file's text with each block it marks (markers named ``block_name``) regenerated."""
    name = Path(os.path.relpath(path)).as_posix()
    generated = f"<!-- generated by: python eval/report.py {args.results} --readme {name}; do not edit by hand -->"
    results_link = Path(os.path.relpath(args.results_page, path.parent)).as_posix()
    for block in tables.marked_blocks(text, block_name, str(path)):
        lines = tables.full_block(report) if block == tables.FULL else tables.headline_block(report, results_link)
        text = tables.replace_block(text, [generated, "", *lines], block_name, block)
    return text


def main(args: Args) -> None:
    if args.reps < 1 or not 0 < args.alpha < 1 or not 0 < args.final_fraction <= 1:
        raise SystemExit("error: --reps must be >= 1, --alpha in (0, 1), --final-fraction in (0, 1]")
    if (args.readme is None) == (args.check is None):
        raise SystemExit("error: give one of --readme FILE [FILE ...] (write) or --check FILE [FILE ...] (compare)")
    files = list(dict.fromkeys(Path(f) for f in (args.readme if args.readme is not None else args.check)))
    if not files:
        raise SystemExit(f"error: {'--readme' if args.readme is not None else '--check'} needs at least one "
                         "markdown file")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)}: not a file")
    options = tables.Options(reference=args.reference, baseline=args.baseline, reps=args.reps, alpha=args.alpha,
                             final_fraction=args.final_fraction, seed=args.seed)
    figures = Path(args.figures or Path("docs") / "results" / Path(args.results).name)
    try:
        texts = {f: f.read_text() for f in files}
        block_name = tables.block_name(args.results, study_paradigm(Path(args.results)))
        for f, text in texts.items():  # refuse a file without markers before any work
            tables.marked_blocks(text, block_name, str(f))
        if args.readme is not None:
            check_output_folder(figures, "--figures")
        print(f"reading the runs under {args.results} ...", flush=True)
        runs = load_runs(Path(args.results), args.final_fraction, warn=print_warning)
        report = tables.study_report(runs, options, figures.as_posix())
        new_texts = {f: generated_blocks(text, f, report, args, block_name) for f, text in texts.items()}
        if args.check is not None:
            differing = [str(f) for f in files if new_texts[f] != texts[f]]
            if differing:
                sys.exit(f"error: the results block of {', '.join(differing)} is not the output of eval/report.py "
                         f"{args.results}; regenerate it with --readme {' '.join(differing)}")
            print(f"{', '.join(map(str, files))}: the blocks are the output of eval/report.py {args.results}")
            return
        draw_figures(runs, options, figures)
    except InputError as error:
        raise SystemExit(f"error: {error}")
    for f in files:
        f.write_text(new_texts[f])
    print(f"wrote the blocks of {', '.join(map(str, files))} and the figures in {figures}/")


if __name__ == "__main__":
    main(tyro.cli(Args))
