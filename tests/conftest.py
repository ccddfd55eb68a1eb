"""Helpers shared by the test files, imported as ``from conftest import ...``: the repository's paths, running
its scripts in a fresh Python, reading TensorBoard logs, and checking one-line refusals."""

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "agents" / "ppo_camal.py"


# ---------------------------------------------------------------- subprocesses


def run_python(*args: str | Path, cwd: Path = ROOT, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` (a script's path and its flags, or ``-c CODE``) in ``cwd`` with stdin closed; the
    returned process has its stdout and stderr as text."""
    # output through files, not pipes: an engine left orphaned would hold a pipe open until the timeout
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        out.seek(0)
        err.seek(0)
        done.stdout = out.read().decode(errors="replace")
        done.stderr = err.read().decode(errors="replace")
    return done


def run_trainer(*flags: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python agents/ppo_camal.py FLAGS``, whatever its exit status."""
    return run_python(TRAINER, *flags, cwd=cwd, timeout=timeout)


def train(runs_dir: Path, *flags: str, cwd: Path = ROOT, timeout: float = 300) -> Path:
    """A training run into ``runs_dir`` that must succeed; returns the one run folder it made."""
    before = set(runs_dir.glob("*"))
    done = run_trainer("--runs-dir", str(runs_dir), *flags, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = set(runs_dir.glob("*")) - before
    return run_dir


# ---------------------------------------------------------------- TensorBoard logs


def all_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run folder -> its (step, value) points, as TensorBoard shows them (a resume's
    purge_step applied), none sampled away."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """The (step, value) points of one tag of a run folder; KeyError if the tag was never logged."""
    return all_scalars(run_dir)[tag]


def event_file_steps(event_file: Path, tag: str) -> list[int]:
    """Steps of a tag in one event file, as written (TensorBoard's purge not applied)."""
    return [event.step for event in EventFileLoader(str(event_file)).Load()
            if event.HasField("summary") and any(v.tag == tag for v in event.summary.value)]


# ---------------------------------------------------------------- refusals


def exit_message(main, args) -> str:
    """The message ``main(args)`` exits with; the exit must be a failure."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    return str(exit_info.value.code)


def refusal(main, args) -> str:
    """The message ``main(args)`` exits with, which must be one line starting with ``error: ``."""
    text = exit_message(main, args)
    assert text.startswith("error: ") and "\n" not in text, text
    return text


def assert_one_line_listing(message: str, valid_names) -> None:
    """An error message on one line that names every valid choice."""
    assert "\n" not in message
    for name in valid_names:
        assert name in message, f"{name!r} missing from the error message: {message}"


# ---------------------------------------------------------------- the study runner


def load_study_module():
    """experiments/study.py as a module (it is a script, not a package module), loaded once."""
    if "study" not in sys.modules:
        spec = importlib.util.spec_from_file_location("study", ROOT / "experiments" / "study.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["study"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["study"]


def open_files(pid: int) -> set[str]:
    """The paths of the files process pid has open."""
    paths = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return paths
