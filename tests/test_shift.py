"""eval/shift.py with the real engine: only background pixels change; the CLI writes its result."""

import json

import numpy as np
import pytest
import torch

from agents.network import Agent
from conftest import ROOT, run_python
from envs import make_env
from envs.doom import make_doom_env
from eval.shift import RESULT_FILE, Args, BackgroundShift, background, main

pytestmark = pytest.mark.slow  # engines, and the command line in a fresh Python


def test_only_background_pixels_change_frame_by_frame():
    """A shifted and a plain engine in lockstep: every changed pixel is one the label buffer gives to no
    object; the Cacodemon and the weapon (Self) are untouched; nearly all background pixels changed."""
    plain, shifted = make_doom_env("basic"), BackgroundShift(make_doom_env("basic"))
    try:
        plain_obs, _ = plain.reset(seed=5)
        shifted_obs, _ = shifted.reset(seed=5)
        rng = np.random.default_rng(0)
        for step in range(40):
            state = shifted.unwrapped.state
            if state is None:
                break
            values = {label.object_name: label.value for label in state.labels}
            assert "DoomPlayer" in values and "Cacodemon" in values  # the weapon is labelled Self
            is_background = background(state.labels_buffer, state.labels)
            assert set(np.unique(state.labels_buffer[is_background])) <= {0, 1}
            before, after = plain_obs["screen"][..., 0], shifted_obs["screen"][..., 0]
            changed = before != after
            assert not (changed & ~is_background).any(), f"step {step}: an object pixel changed"
            assert changed[is_background].mean() > 0.8, f"step {step}: the background barely changed"
            for name in ("DoomPlayer", "Cacodemon"):
                on_object = state.labels_buffer == values[name]
                np.testing.assert_array_equal(after[on_object], before[on_object])
            # the texture keeps the frame's mean background brightness (up to rounding and clipping)
            assert abs(float(after[is_background].mean()) - float(before[is_background].mean())) < 3
            action = int(rng.integers(plain.action_space.n))
            plain_obs, _, terminated, truncated, _ = plain.step(action)
            shifted_obs, _, shifted_terminated, shifted_truncated, _ = shifted.step(action)
            assert (terminated, truncated) == (shifted_terminated, shifted_truncated)
            if terminated or truncated:
                break
        assert step >= 10
    finally:
        plain.close()
        shifted.close()


def test_preprocessed_shift_keeps_the_mask():
    """Through make_env: the stacked frames differ, the target mask (from the labels) does not."""
    plain, shifted = make_env("basic"), make_env("basic", screen_wrapper=BackgroundShift)
    try:
        a, _ = plain.reset(seed=2)
        b, _ = shifted.reset(seed=2)
        for _ in range(5):
            a, *_ = plain.step(0)
            b, *_ = shifted.step(0)
        assert a["mask"].any() and np.array_equal(a["mask"], b["mask"])
        assert (a["pixels"][-1] != b["pixels"][-1]).mean() > 0.5
    finally:
        plain.close()
        shifted.close()


def test_cli_writes_ratio_and_agreement(tmp_path):
    """An untrained agent: return ratio and action agreement are measured over the shifted frames."""
    env = make_env("basic")
    actions = int(env.action_space.n)
    env.close()
    agent = Agent(actions)
    torch.save({"model": agent.state_dict(), "num_actions": actions, "global_step": 0}, tmp_path / "checkpoint.pt")
    (tmp_path / "config.json").write_text(json.dumps({"env": "basic", "method": "vanilla", "seed": 1}))
    result = main(Args(run=str(tmp_path), episodes=2, seed=1, cuda=False))
    written = json.loads((tmp_path / RESULT_FILE).read_text())
    assert written["means"] == result["means"] or np.isnan(result["means"]["shift_return_ratio"])
    assert len(written["returns"]) == len(written["returns_shifted"]) == 2
    assert 0.0 <= written["means"]["shift_action_agreement"] <= 1.0 and written["frames_shifted"] > 0
    mean, shifted = np.mean(written["returns"]), np.mean(written["returns_shifted"])
    if mean > 0:
        assert written["means"]["shift_return_ratio"] == shifted / mean


def test_cli_error_is_one_line(tmp_path):
    done = run_python(ROOT / "eval" / "shift.py", tmp_path / "missing", cwd=tmp_path)
    assert done.returncode != 0 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
