"""Every entry point answers bad input with one line and a non-zero exit, before it writes anything.

The refusals happen before an engine starts, so the in-process tests are fast; those of the command lines
start a fresh Python each and are marked slow. (eval/aggregate.py, experiments/ and benchmarks/ test their own.)
"""

import math

import pytest

from agents.ppo_args import Args as TrainArgs
from agents.ppo_camal import main as train_main
from conftest import ROOT, refusal, run_python, run_trainer
from eval.attention import Args as EvalArgs
from eval.attention import main as eval_main
from envs.preview import Args as PreviewArgs
from envs.preview import main as preview_main

UNWRITABLE = "/proc/camal-test"  # /proc takes no new folders, even for root (chmod does not stop root)


@pytest.fixture
def in_empty_folder(tmp_path, monkeypatch):
    """Runs the test in an empty working folder, to check that nothing was written to it."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("overrides, message", [
    ({"env": "doom3"}, "unknown scenario 'doom3'; valid: basic"),
    ({"camal_coef": -1.0}, "--camal-coef must be >= 0"),
    ({"num_minibatches": 3}, "does not divide the batch"),
    ({"targets": "Cacodemon,Unicorn"}, "unknown target 'Unicorn'; valid:"),
    ({"targets": ""}, "empty target list"),
    ({"resume": "."}, "not a run folder"),
    ({"seed": -1}, "--seed must be in [0, 4294967295]"),
    ({"seed": 2**33}, "--seed must be in [0, 4294967295]"),
    ({"learning_rate": math.nan}, "--learning-rate must be a finite number, got nan"),
    ({"camal_coef": math.nan}, "--camal-coef must be a finite number"),
    ({"gamma": math.inf}, "--gamma must be a finite number"),
    ({"target_kl": -math.inf}, "--target-kl must be a finite number"),
    ({"gamma": 1.5}, "--gamma must be in [0, 1]"),
    ({"learning_rate": 0.0}, "--learning-rate must be > 0"),
    ({"save_every": 0}, "--save-every must be > 0"),
    ({"image_every": -1}, "--image-every must be >= 0"),
    ({"num_envs": 1, "num_steps": 2, "num_minibatches": 2}, "a minibatch of 1 sample cannot normalise advantages"),
    ({"runs_dir": "a_file"}, "a_file is a file, not a folder"),
    ({"runs_dir": "a_file/runs"}, "a_file is a file, not a folder"),
    ({"runs_dir": UNWRITABLE}, "/proc is not writable"),
    ({"track": True}, "--track needs wandb"),
])
def test_trainer_refuses_bad_arguments(overrides, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    assert message in refusal(train_main, TrainArgs(**{"runs_dir": "runs", **overrides}))
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]  # no run folder, no runs/ folder


@pytest.mark.slow
def test_trainer_cli_exits_1_with_one_line(tmp_path):
    done = run_trainer("--seed", "-1", cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: --seed must be in [0, 4294967295] (numpy's seed range), got -1"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("overrides, message", [
    ({"episodes": 0}, "--episodes must be >= 1"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
    ({"deletion_steps": 0}, "--deletion-steps must be >= 1"),
    ({"seed": -1}, "--seed must be in [0,"),
    ({"out": "a_file"}, "a_file is a file, not a folder"),
    ({"out": UNWRITABLE + "/out"}, "/proc is not writable"),
    ({"record_frames": "a_file/frames.npz"}, "a_file is a file, not a folder"),
    ({"record_frames": "."}, "is a folder; give a .npz file name"),
    ({"run": "no_such_run"}, "no_such_run: no such file or folder"),
    ({"run": "a_file"}, "not a readable checkpoint"),
])
def test_attention_eval_refuses_bad_arguments(overrides, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a checkpoint")
    (tmp_path / "config.json").write_text('{"env": "basic"}')
    assert message in refusal(eval_main, EvalArgs(**{"run": "a_file", **overrides}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "config.json"]


@pytest.mark.parametrize("overrides, message", [
    ({"every": 0}, "--every must be >= 1"),
    ({"columns": 0}, "--columns must be >= 1"),
    ({"frames": 0}, "--frames must be >= 1"),
    ({"seed": -1}, "--seed must be >= 0"),
    ({"out": "missing/preview.png"}, "folder missing does not exist"),
    ({"out": "."}, "is a folder; give a .png file name"),
    ({"env": "doom3"}, "unknown scenario 'doom3'"),
    ({"targets": ""}, "empty target list"),
    ({"targets": "Unicorn"}, "unknown target 'Unicorn'"),
])
def test_mask_preview_refuses_bad_arguments(overrides, message, in_empty_folder):
    assert message in refusal(preview_main, PreviewArgs(**overrides))


@pytest.mark.slow
def test_mask_preview_cli_exits_1_with_one_line(in_empty_folder):
    done = run_python(ROOT / "envs/preview.py", "--every", "0", cwd=in_empty_folder, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: --every must be >= 1, got 0"]


@pytest.mark.slow
@pytest.mark.parametrize("script, flags, message", [
    ("benchmarks/train_speed.py", ["--env", "nope"], "unknown scenario 'nope'"),
    ("benchmarks/train_speed.py", ["--repeats", "0"], "--repeats must be > 0"),
    ("benchmarks/env_throughput.py", ["--env", "nope"], "unknown scenario 'nope'"),
    ("benchmarks/env_throughput.py", ["--steps", "0"], "--steps must be at least 1"),
    ("benchmarks/study_overhead.py", ["--env", "nope"], "unknown scenario 'nope'"),
    ("benchmarks/study_overhead.py", ["--method", "nope"], "unknown --method 'nope'"),
    ("benchmarks/aggregate_bootstrap.py", ["--reps", "0"], "--reps and --noise-seeds must be >= 1"),
    ("eval/random_baseline.py", ["--env", "nope"], "unknown scenario 'nope'"),
    ("eval/random_baseline.py", ["--episodes", "0"], "--episodes must be >= 1"),
])
def test_benchmarks_and_tools_exit_1_with_one_line(script, flags, message, tmp_path):
    """Refused before any engine starts or file is written: one line on stderr, exit status 1."""
    done = run_python(ROOT / script, *flags, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []
