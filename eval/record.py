"""Export finished runs to compact run records, committed to the repository (kilobytes, not checkpoints).

    python eval/record.py runs/basic__camal__1__1700000000 runs/basic__vanilla__1__1700000000 --study basic_100k

A record ``results/<study>/<run folder name>/`` holds the run's ``config.json``, its episodic-return
curve ``returns.csv`` (columns step, return: every ``charts/episodic_return`` of its event files) and,
when present, ``attention_eval.json`` (eval/attention.py) and ``shift_eval.json`` (eval/shift.py).
A classifier run's record (agents/camal_classifier.py) holds its ``config.json``, its per-epoch ``curves.csv``
and, when present, ``classifier_eval.json`` (eval/classifier.py); it is complete when the run's checkpoint has
reached the config's epochs (a folder without checkpoint.pt: its curves.csv) and evaluated when it has a
classifier_eval.json. ``eval/aggregate.py results/<study>`` reads records as it reads run folders, so runs
finished on different machines or days add up.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pandas as pd
import tyro

from agents.run_folder import CHECKPOINT, CLASSIFIER_EVAL, CONFIG, CURVES, RETURNS
from eval.runs import (CLASSIFIER, InputError, NotEvaluated, Run, SkippedRun, check_output_folder, evaluation_files,
                       load_run)


@dataclass
class Args:
    runs: Annotated[list[str], tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """finished run folders to export"""
    study: str
    """name of the study: records go to RESULTS_DIR/STUDY/ (letters, digits, '.', '_', '-')"""
    results_dir: str = "results"
    """folder holding the studies"""
    overwrite: bool = False
    """replace a record that already exists (default: refuse)"""
    new_only: bool = False
    """export only the runs that are complete, evaluated (attention_eval.json and shift_eval.json; a classifier:
    classifier_eval.json) and have no record yet; list the others and skip them (e.g. a study's folder: python
    eval/record.py runs/paper/*/*/ --study paper --new-only)"""
    unfinished: bool = False
    """also export runs still training: their curve so far (e.g. the vanilla learning curve that sets a study's
    budget); eval/aggregate.py lists such records as unfinished and leaves them out"""


def export_run(run_dir: Path, record_dir: Path, unfinished: bool = False) -> list[Path]:
    """Write the record of a complete run (or of one still training); returns the files written."""
    run = load_run(run_dir, final_fraction=1.0 if unfinished else 0.1, warn=lambda message: None,
                   unfinished=unfinished)
    record_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / CONFIG, record_dir / CONFIG)
    if run.paradigm == CLASSIFIER:
        shutil.copyfile(run_dir / CURVES, record_dir / CURVES)
        written = [record_dir / CONFIG, record_dir / CURVES]
    else:
        pd.DataFrame({"step": run.steps, "return": run.returns}).to_csv(record_dir / RETURNS, index=False)
        written = [record_dir / CONFIG, record_dir / RETURNS]
    for name in evaluation_files(run.paradigm):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, record_dir / name)
            written.append(record_dir / name)
    return written


def check_classifier_checkpoint(run: Run) -> None:
    """SkippedRun if a classifier run folder's checkpoint has not reached its epochs (curves.csv is written just
    before the checkpoint; a record has no checkpoint and its curves.csv says)."""
    if not (run.path / CHECKPOINT).is_file():
        return
    from agents.run_folder import load_classifier_checkpoint

    try:
        epoch = int(load_classifier_checkpoint(run.path)["epoch"])
    except ValueError as error:
        raise InputError(str(error)) from None
    if epoch < run.total_timesteps:
        raise SkippedRun(f"unfinished: its {CHECKPOINT} is at epoch {epoch} of {run.total_timesteps}")


def print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(args: Args) -> None:
    """Check every run first, then export: a refused command writes nothing."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.study) or set(args.study) == {"."}:
        sys.exit(f"error: --study '{args.study}' must be a folder name of letters, digits, '.', '_' and '-'")
    study_dir = Path(args.results_dir) / args.study
    try:
        check_output_folder(study_dir, "--results-dir/--study")
    except InputError as error:
        sys.exit(f"error: {error}")
    if args.new_only and (args.overwrite or args.unfinished):
        sys.exit("error: --new-only exports finished runs without a record; it goes with neither --overwrite nor "
                 "--unfinished")
    targets, skipped = [], []
    for run in args.runs:
        run_dir = Path(run)
        if not (run_dir / CONFIG).is_file():
            if args.new_only:
                skipped.append(f"{run}: not a run folder (no {CONFIG})")
                continue
            sys.exit(f"error: {run}: not a run folder (no {CONFIG})")
        record_dir = study_dir / run_dir.resolve().name
        try:
            loaded = load_run(run_dir, final_fraction=1.0 if args.unfinished else 0.1, warn=print_warning,
                              unfinished=args.unfinished)
            if loaded.paradigm == CLASSIFIER and not args.unfinished:
                check_classifier_checkpoint(loaded)
        except InputError as error:
            sys.exit(f"error: {error}")
        except NotEvaluated as reason:  # a classifier run is recorded with its evaluation (or --unfinished)
            if args.new_only:
                skipped.append(f"{run}: " + ("has a record" if record_dir.exists() else f"no {CLASSIFIER_EVAL} yet"))
                continue
            sys.exit(f"error: {run}: not a complete run ({reason}; --unfinished exports its curves so far)")
        except SkippedRun as reason:
            if args.new_only:
                skipped.append(f"{run}: not finished ({reason})")
                continue
            sys.exit(f"error: {run}: not a complete run ({reason})")
        if args.new_only:
            missing = [name for name in evaluation_files(loaded.paradigm) if not (run_dir / name).is_file()]
            if record_dir.exists() or missing:
                skipped.append(f"{run}: " + ("has a record" if record_dir.exists() else f"no {', '.join(missing)} yet"))
                continue
        if record_dir.exists() and not args.overwrite:
            sys.exit(f"error: {record_dir} exists; --overwrite replaces it")
        if record_dir in (target for _, target in targets):
            sys.exit(f"error: two runs named {run_dir.resolve().name}; a study holds one record per run folder name")
        targets.append((run_dir, record_dir))
    for run_dir, record_dir in targets:
        written = export_run(run_dir, record_dir, args.unfinished)
        size = sum(path.stat().st_size for path in written)
        print(f"{run_dir} -> {record_dir} ({len(written)} files, {size / 1024:.1f} kB)")
    if skipped:
        print(f"skipped {len(skipped)}:\n  " + "\n  ".join(skipped))


if __name__ == "__main__":
    main(tyro.cli(Args))
