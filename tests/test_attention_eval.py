"""eval/attention.py end to end on a tiny trained run, with the real engine."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agents.network import Agent
from conftest import ROOT, refusal, run_python, train
from eval.attention import GIF_MAX_FRAMES, GIF_SCALE, Args, main

MEAN_KEYS = {"relevance_mass", "relevance_mass_chance", "relevance_rank", "relevance_rank_chance",
             "pointing_game", "pointing_game_chance", "deletion_auc", "deletion_auc_random",
             "insertion_auc", "insertion_auc_random", "occlusion_drop", "occlusion_drop_random",
             "occlusion_drop_dilated", "occlusion_drop_dilated_random"}
TOP_KEYS = {"run", "env", "method", "seed", "checkpoint_step", "frames_total", "frames_used",
            "frames_empty_mask", "frames_zero_map", "episodes", "mean_return", "means"}
DELETION_STEPS = 5  # few steps keep the test fast; the metric code is tested in test_metrics.py


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("train")
    return train(work / "runs", "--env", "basic", "--total-timesteps", "1024", "--num-envs", "2", "--num-steps", "512",
                 "--num-minibatches", "2", "--update-epochs", "1", "--no-cuda", cwd=work)


@pytest.fixture(scope="module")
def rollout(run_dir, tmp_path_factory):
    """The CLI on the run: one episode, frames recorded. Returns (result, output folder, frames file)."""
    out = tmp_path_factory.mktemp("eval")
    frames_file = out / "frames.npz"
    process = run_python(ROOT / "eval" / "attention.py", run_dir, "--episodes", "1", "--seed", "3",
                         "--deletion-steps", DELETION_STEPS, "--record-frames", frames_file, "--out", out, cwd=out)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "relevance_mass" in process.stdout  # the printed table
    return json.loads((out / "attention_eval.json").read_text()), out, frames_file


@pytest.mark.slow
def test_cli_writes_result_with_sane_values(rollout, run_dir):
    result, _, _ = rollout
    assert TOP_KEYS <= result.keys()
    assert set(result["means"]) == MEAN_KEYS
    assert result["env"] == "basic" and result["method"] == "camal" and result["run"] == run_dir.name
    assert result["checkpoint_step"] == 1024
    assert result["episodes"] == 1 and isinstance(result["mean_return"], float)
    assert result["frames_total"] > 0
    assert result["frames_used"] + result["frames_empty_mask"] == result["frames_total"]
    assert 0 <= result["frames_zero_map"] <= result["frames_used"]
    assert result["frames_used"] > 0  # basic: the Cacodemon is always in view
    for name, value in result["means"].items():
        if math.isnan(value):  # only alignment, and only when every map is all zero
            assert name.startswith(("relevance", "pointing")), name
            assert result["frames_zero_map"] == result["frames_used"]
        elif name.startswith("occlusion"):  # a drop of a probability: occluding may also raise pi(a*|x)
            assert -1.0 <= value <= 1.0, name
        else:
            assert 0.0 <= value <= 1.0, name
    assert len(result["mean_curves"]["fractions"]) == DELETION_STEPS + 1


@pytest.mark.slow
def test_cli_writes_pictures(rollout):
    result, out, _ = rollout
    for name in ("deletion_insertion.png", "attention_grid.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200, name
    with Image.open(out / "attention_episode.gif") as gif:
        assert gif.n_frames == min(result["frames_total"], GIF_MAX_FRAMES)  # one episode
        assert gif.size == (3 * 84 * GIF_SCALE, 84 * GIF_SCALE)


@pytest.mark.slow
def test_recorded_frames_reproduce_the_metrics(rollout, run_dir, tmp_path):
    result, _, frames_file = rollout
    with np.load(frames_file) as data:
        assert data["pixels"].shape == (result["frames_total"], 4, 84, 84) and data["pixels"].dtype == np.uint8
        assert data["masks"].shape == (result["frames_total"], 84, 84)
        assert str(data["env"]) == "basic"
    again = main(Args(run=str(run_dir / "checkpoint.pt"), frames=str(frames_file), seed=3,
                      deletion_steps=DELETION_STEPS, out=str(tmp_path), video=False))
    assert again["frames_source"] == "file" and again["mean_return"] is None
    for key in ("frames_total", "frames_used", "frames_empty_mask", "frames_zero_map"):
        assert again[key] == result[key], key
    assert again["means"] == pytest.approx(result["means"], rel=1e-6, abs=1e-9, nan_ok=True)
    written = json.loads((tmp_path / "attention_eval.json").read_text())["means"]
    assert written == pytest.approx(again["means"], nan_ok=True)


# ---------------------------------------------------------------- errors


def rewritten_frames(frames_file: Path, target: Path, **changes) -> Path:
    """A copy of the recorded frames with some arrays replaced (None: removed)."""
    with np.load(frames_file) as data:
        contents = {key: data[key] for key in data.files}
    contents.update(changes)
    np.savez_compressed(target, **{key: value for key, value in contents.items() if value is not None})
    return target


@pytest.mark.slow
def test_cli_error_is_one_line_without_traceback(tmp_path):
    process = run_python(ROOT / "eval" / "attention.py", tmp_path / "nowhere", cwd=tmp_path, timeout=120)
    assert process.returncode != 0
    assert process.stderr.strip().startswith("error: ") and len(process.stderr.strip().splitlines()) == 1
    assert "Traceback" not in process.stderr


def test_error_for_a_folder_without_checkpoint(tmp_path):
    assert "checkpoint.pt" in refusal(main, Args(run=str(tmp_path)))


@pytest.mark.slow
def test_error_for_a_checkpoint_without_config(run_dir, tmp_path):
    shutil.copy(run_dir / "checkpoint.pt", tmp_path / "checkpoint.pt")
    assert "config.json" in refusal(main, Args(run=str(tmp_path / "checkpoint.pt")))


@pytest.mark.slow
@pytest.mark.parametrize("change, expected", [
    ({"env": np.array("defend_the_center")}, "defend_the_center"),
    ({"num_actions": np.array(7)}, "7 actions"),
    ({"pixels": np.zeros((3, 84, 84), np.uint8)}, "pixels must be"),
    ({"masks": np.zeros((2, 84, 84), np.uint8)}, "masks must be"),
    ({"masks": None}, "missing masks"),
])
def test_error_for_a_mismatched_frames_file(rollout, run_dir, tmp_path, change, expected):
    _, _, frames_file = rollout
    bad = rewritten_frames(frames_file, tmp_path / "bad.npz", **change)
    assert expected in refusal(main, Args(run=str(run_dir), frames=str(bad), out=str(tmp_path)))


@pytest.mark.slow
def test_error_for_a_missing_frames_file(run_dir, tmp_path):
    assert "no such file" in refusal(main, Args(run=str(run_dir), frames=str(tmp_path / "none.npz")))


@pytest.mark.slow
def test_error_for_a_checkpoint_with_another_action_count(run_dir, tmp_path):
    shutil.copy(run_dir / "config.json", tmp_path / "config.json")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    wrong = state["num_actions"] + 2
    torch.save({"model": Agent(wrong).state_dict(), "num_actions": wrong, "global_step": 0},
               tmp_path / "checkpoint.pt")
    message = refusal(main, Args(run=str(tmp_path), episodes=1, out=str(tmp_path)))
    assert f"{wrong} actions" in message


# ---------------------------------------------------------------- frames without ground truth


@pytest.mark.slow
def test_empty_masks_are_counted_and_left_out(rollout, run_dir, tmp_path):
    result, _, frames_file = rollout
    with np.load(frames_file) as data:
        masks = data["masks"].copy()
    masks[::2] = 0
    emptied = int((masks.reshape(len(masks), -1).max(axis=1) == 0).sum())
    some_empty = rewritten_frames(frames_file, tmp_path / "some_empty.npz", masks=masks)
    partial = main(Args(run=str(run_dir), frames=str(some_empty), deletion_steps=2, out=str(tmp_path / "a"),
                        video=False))
    assert partial["frames_empty_mask"] == emptied
    assert partial["frames_used"] == result["frames_total"] - emptied

    all_empty = rewritten_frames(frames_file, tmp_path / "all_empty.npz", masks=np.zeros_like(masks))
    nothing = main(Args(run=str(run_dir), frames=str(all_empty), deletion_steps=2, out=str(tmp_path / "b")))
    assert nothing["frames_used"] == 0 and all(math.isnan(value) for value in nothing["means"].values())
    assert sorted(path.name for path in (tmp_path / "b").iterdir()) == ["attention_episode.gif", "attention_eval.json"]


@pytest.mark.slow
def test_all_zero_maps_are_counted_and_left_out_of_alignment(rollout, tmp_path):
    """A policy with a zero actor layer has constant logits, so every Grad-CAM map is all zero."""
    result, _, frames_file = rollout
    shutil.copy(Path(result["run_dir"]) / "config.json", tmp_path / "config.json")
    agent = Agent(int(np.load(frames_file)["num_actions"]))
    torch.nn.init.zeros_(agent.actor.weight)
    torch.save({"model": agent.state_dict(), "num_actions": agent.actor.out_features, "global_step": 0},
               tmp_path / "checkpoint.pt")
    flat = main(Args(run=str(tmp_path), frames=str(frames_file), deletion_steps=2, video=False))
    assert flat["frames_zero_map"] == flat["frames_used"] == result["frames_used"]
    for name, value in flat["means"].items():
        if name.startswith(("relevance", "pointing")):
            assert math.isnan(value), name
        elif name.startswith("occlusion"):  # pi is uniform whatever the input: occluding changes nothing
            assert value == pytest.approx(0.0, abs=1e-6), name
        else:  # faithfulness is still measured: pi is uniform whatever the input
            assert value == pytest.approx(1.0 / agent.actor.out_features), name
