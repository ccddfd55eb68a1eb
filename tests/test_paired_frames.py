"""eval/paired_frames.py: two methods evaluated on the same pooled frames, compared seed by seed."""

import json

import pytest
import torch

from agents import run_folder
from agents.network import Agent
from agents.ppo_args import Args, set_runtime_fields
from eval.paired_frames import Args as PairedArgs
from eval.paired_frames import main as compare

BASIC_ACTIONS = 4


def make_run(runs, method: str, seed: int, weights_seed: int):
    """A run folder holding config.json and the checkpoint of an untrained agent with the given init."""
    args = Args(env="basic", seed=seed, attn_loss="none" if method == "vanilla" else "camal")
    set_runtime_fields(args)
    folder = runs / f"basic__{method}__{seed}"
    folder.mkdir(parents=True)
    run_folder.write_config(folder, args)
    torch.manual_seed(weights_seed)
    agent = Agent(BASIC_ACTIONS)
    optimizer = torch.optim.Adam(agent.parameters())
    run_folder.save_checkpoint(folder / run_folder.CHECKPOINT, agent, optimizer, 1, args.batch_size)
    return folder


@pytest.mark.slow
def test_identical_agents_differ_by_nothing_and_different_ones_by_something(tmp_path):
    for seed in (1, 2):
        make_run(tmp_path / "same", "vanilla", seed, weights_seed=seed)
        make_run(tmp_path / "same", "camal", seed, weights_seed=seed)
        make_run(tmp_path / "other", "vanilla", seed, weights_seed=seed)
        make_run(tmp_path / "other", "camal", seed, weights_seed=100 + seed)
    same = compare(PairedArgs(runs=str(tmp_path / "same"), episodes=1, deletion_steps=4, cuda=False))
    for name, row in same["summary"].items():
        assert row["difference"] == 0 or (row["difference"] != row["difference"]), name  # 0, or NaN (no map)
    for seed in ("1", "2"):
        # every agent is scored on the frames of both runs of its seed
        assert same["per_seed"][seed]["frames"] == 2 * (same["per_seed"][seed]["frames"] // 2)
    other = compare(PairedArgs(runs=str(tmp_path / "other"), episodes=1, deletion_steps=4, cuda=False))
    assert other["summary"]["deletion_auc"]["difference"] != 0
    written = json.loads((tmp_path / "other" / "paired_frames_camal_vs_vanilla.json").read_text())
    assert written["seeds"] == [1, 2] and set(written["summary"]) == set(other["summary"])


def test_a_single_seed_or_one_method_is_refused_in_one_line(tmp_path):
    make_run(tmp_path, "vanilla", 1, 1)
    make_run(tmp_path, "camal", 1, 1)
    with pytest.raises(SystemExit) as stop:
        compare(PairedArgs(runs=str(tmp_path), cuda=False))
    assert "1 seed(s) with runs of both vanilla and camal" in str(stop.value)
    with pytest.raises(SystemExit) as stop:
        compare(PairedArgs(runs=str(tmp_path), method="vanilla", cuda=False))
    assert "give two methods" in str(stop.value)
