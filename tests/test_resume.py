"""Interrupting and resuming a real (tiny) training run: the curves, the exit status, the refusals."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agents.ppo_args import Args, resume_args
from agents.ppo_camal import main
from conftest import TRAINER, all_scalars, run_trainer, train

pytestmark = pytest.mark.slow  # every test reads the runs of one module fixture: three tiny trainings

BATCH = 64  # num_envs x num_steps below
UPDATES = 5
TINY = ["--env", "basic", "--num-envs", "2", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "1",
        "--image-every", "0", "--no-cuda", "--save-every", "1", "--total-timesteps", str(UPDATES * BATCH)]
EPISODE_TAGS = ("charts/episodic_return", "charts/episodic_length")
TIMING_TAGS = ("charts/SPS",)  # the only scalar that differs between two runs of the same seed


def checkpoint_of(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and the same run stopped by SIGTERM after a checkpoint and then resumed."""
    work = tmp_path_factory.mktemp("resume")
    whole_dir = train(work / "whole", *TINY, cwd=work, timeout=600)

    process = subprocess.Popen([sys.executable, str(TRAINER), *TINY, "--runs-dir", "cut"], cwd=work,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not list((work / "cut").glob("*/checkpoint.pt")) and time.time() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stopped_stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    (cut_dir,) = (work / "cut").iterdir()
    stopped = checkpoint_of(cut_dir)
    stopped_events = all_scalars(cut_dir)
    resumed = run_trainer("--resume", str(cut_dir), cwd=work, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return {"work": work, "whole": whole_dir, "cut": cut_dir, "returncode": process.returncode,
            "stderr": stopped_stderr, "stopped": stopped, "stopped_events": stopped_events}


def test_sigterm_exits_143_with_a_checkpoint_of_a_completed_update(runs):
    assert runs["returncode"] == 128 + signal.SIGTERM, runs["stderr"][-2000:]
    stopped = runs["stopped"]
    assert 1 <= stopped["iteration"] < UPDATES, "the run finished before SIGTERM; the test needs a longer run"
    assert stopped["global_step"] == stopped["iteration"] * BATCH
    assert "--resume" in runs["stderr"].strip().splitlines()[-1]


def test_the_stopped_run_logged_every_update_up_to_its_checkpoint(runs):
    """The update that wrote the checkpoint is on disk (the step a resume must keep)."""
    steps = [step for step, _ in runs["stopped_events"]["losses/policy_loss"]]
    assert runs["stopped"]["global_step"] in steps


def test_resumed_curves_equal_the_uninterrupted_run_up_to_the_checkpoint(runs):
    whole, cut = all_scalars(runs["whole"]), all_scalars(runs["cut"])
    checkpoint_step = runs["stopped"]["global_step"]
    assert set(whole) == set(cut)
    for tag in whole:
        before_whole = sorted(e for e in whole[tag] if e[0] <= checkpoint_step)
        before_cut = sorted(e for e in cut[tag] if e[0] <= checkpoint_step)
        if tag in TIMING_TAGS:
            before_whole, before_cut = [s for s, _ in before_whole], [s for s, _ in before_cut]
        assert before_cut == before_whole, tag  # nothing lost, nothing twice, same values
        if tag not in EPISODE_TAGS:  # one point per update: the same steps, each once
            steps = [step for step, _ in cut[tag]]
            assert steps == sorted(set(steps)) == [step for step, _ in whole[tag]], tag
    assert [s for s, _ in cut["losses/policy_loss"]] == list(range(BATCH, UPDATES * BATCH + 1, BATCH))
    # after the checkpoint the episodes are new ones (a resume resets the games), within the run's steps
    assert max(step for step, _ in cut["charts/episodic_return"]) <= UPDATES * BATCH
    finished = checkpoint_of(runs["cut"])
    assert (finished["iteration"], finished["global_step"]) == (UPDATES, UPDATES * BATCH)


def test_resuming_a_finished_run_changes_nothing(runs):
    folder = runs["whole"]
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    done = run_trainer("--resume", str(folder), cwd=runs["work"], timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished" in done.stdout
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_resume_with_more_timesteps_trains_longer(runs, tmp_path):
    folder = Path(shutil.copytree(runs["whole"], tmp_path / runs["whole"].name))
    longer = run_trainer("--resume", str(folder), "--total-timesteps", str((UPDATES + 2) * BATCH), cwd=runs["work"],
                         timeout=600)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert "learning rate" in longer.stderr  # the annealing schedule changed, and the user is told
    assert json.loads((folder / "config.json").read_text())["total_timesteps"] == (UPDATES + 2) * BATCH
    assert checkpoint_of(folder)["iteration"] == UPDATES + 2
    scalars = all_scalars(folder)
    assert [s for s, _ in scalars["losses/policy_loss"]] == list(range(BATCH, (UPDATES + 2) * BATCH + 1, BATCH))
    learning_rates = dict(scalars["charts/learning_rate"])
    assert learning_rates[(UPDATES + 1) * BATCH] == pytest.approx(2.5e-4 * (1 - UPDATES / (UPDATES + 2)))


@pytest.mark.parametrize("flags, message", [
    (["--num-envs", "4"], "cannot change --num-envs (2 -> 4)"),
    (["--seed", "1", "--learning-rate", "0.001"], "cannot change --learning-rate"),
    (["--total-timesteps", str(BATCH)], f"the run has already trained {UPDATES * BATCH} steps"),
])
def test_resume_refuses_flags_that_would_change_the_run(runs, flags, message):
    folder = runs["whole"]
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    refused = run_trainer("--resume", str(folder), *flags, cwd=runs["work"], timeout=600)
    assert refused.returncode == 1
    assert message in refused.stderr and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def damaged_copy(runs, tmp_path, config_changes: dict | None = None, truncate: bool = False) -> Path:
    folder = Path(shutil.copytree(runs["whole"], tmp_path / "damaged"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **(config_changes or {})}))
    if truncate:
        data = (folder / "checkpoint.pt").read_bytes()
        (folder / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    return folder


@pytest.mark.parametrize("config_changes, truncate, message", [
    ({"num_envs": 4}, False, "do not match config.json's batch"),
    (None, True, "not a readable checkpoint"),
    ({"env": "deadly_corridor"}, False, "actions, but 'deadly_corridor' has"),
])
def test_a_checkpoint_that_does_not_match_its_config_is_refused(runs, tmp_path, config_changes, truncate, message):
    folder = damaged_copy(runs, tmp_path, config_changes, truncate)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    with pytest.raises(SystemExit) as exit_info:  # asked to train on, so the run is not simply finished
        main(dataclasses.replace(resume_args(folder), total_timesteps=(UPDATES + 1) * BATCH))
    text = str(exit_info.value.code)
    assert message in text and "\n" not in text
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_resume_args_of_the_python_api_must_not_differ_from_the_run(runs):
    with pytest.raises(SystemExit) as exit_info:
        main(Args(resume=str(runs["whole"])))  # Args() defaults: another batch, runs dir, ...
    assert "cannot change" in str(exit_info.value.code)
