"""The scenario table, custom .cfg scenarios through every tool, and the random baseline (real engine)."""

import json
import math
import os
from pathlib import Path

import pytest
import vizdoom as vzd

from agents.ppo_args import Args as TrainArgs
from agents.ppo_camal import main as train
from conftest import exit_message, run_trainer
from envs import make_env
from eval.aggregate import Args as AggregateArgs
from eval.aggregate import main as aggregate
from eval.attention import Args as AttentionArgs
from eval.attention import main as evaluate_attention
from eval.shift import Args as ShiftArgs
from eval.shift import main as evaluate_shift
from eval.random_baseline import Args as BaselineArgs
from eval.random_baseline import main as random_baseline
from masks.labels import KNOWN_OBJECTS
from envs.preview import Args as PreviewArgs
from envs.preview import main as preview
from scenarios import SCENARIOS, check_scenario, wad_path

STOCK_WAD = os.path.join(vzd.scenarios_path, "basic.wad")
MOVE_LEFT = 0  # basic's buttons: MOVE_LEFT, MOVE_RIGHT, ATTACK


def custom_basic(folder: Path, wad: str = STOCK_WAD) -> Path:
    """A copy of basic.cfg with a living reward of -2 a tic (stock: -1), pointing at ``wad``."""
    text = Path(vzd.scenarios_path, "basic.cfg").read_text()
    assert "living_reward = -1" in text and "doom_scenario_path = basic.wad" in text
    cfg = folder / "my_basic.cfg"
    cfg.write_text(text.replace("living_reward = -1", "living_reward = -2")
                   .replace("doom_scenario_path = basic.wad", f"doom_scenario_path = {wad}"))
    return cfg


@pytest.mark.parametrize("name", [name for name in SCENARIOS if name != "deathmatch"])
def test_every_playable_stock_record_is_complete(name):
    record = SCENARIOS[name]
    assert check_scenario(name) is record
    assert record.reward_scale > 0 and record.targets and set(record.targets) <= KNOWN_OBJECTS
    assert record.r_max > record.r_random
    assert record.r_random_source and record.r_max_source


@pytest.mark.slow
def test_a_custom_cfg_runs_its_own_rewards_on_the_stock_wad(tmp_path):
    cfg = custom_basic(tmp_path)
    env = make_env(str(cfg), targets="Cacodemon", reward_transform="none")
    try:
        env.reset(seed=0)
        _, reward, *_ = env.step(MOVE_LEFT)
    finally:
        env.close()
    assert reward == -8.0  # -2 a tic x frame skip 4; the stock cfg gives -4


def test_a_wad_missing_next_to_the_cfg_is_taken_from_vizdooms_folder(tmp_path):
    assert wad_path(check_scenario(str(custom_basic(tmp_path, wad="basic.wad")))) == os.path.abspath(STOCK_WAD)
    with pytest.raises(ValueError, match="no_such.wad"):
        check_scenario(str(custom_basic(tmp_path, wad="no_such.wad")))


@pytest.mark.slow
def test_without_targets_the_error_lists_the_objects_seen(tmp_path):
    cfg = custom_basic(tmp_path)
    runs = tmp_path / "runs"
    done = run_trainer("--env", str(cfg), "--reward-scale", "0.01", "--runs-dir", str(runs), cwd=tmp_path, timeout=120)
    message = done.stderr.strip()
    assert done.returncode != 0 and "\n" not in message and "Traceback" not in message
    assert "--targets" in message and "Cacodemon (Monster)" in message
    assert "DoomPlayer" not in message  # never-targets are not offered
    assert not runs.exists()  # nothing written


def test_a_custom_scenario_needs_an_explicit_reward_transform(tmp_path):
    cfg = custom_basic(tmp_path)
    message = exit_message(train, TrainArgs(env=str(cfg), targets="Cacodemon", runs_dir=str(tmp_path / "runs")))
    assert "--reward-scale" in message and "\n" not in message
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_custom_scenario_trains_previews_evaluates_and_aggregates(tmp_path):
    cfg = custom_basic(tmp_path)
    run_dir = train(TrainArgs(env=str(cfg), targets="Cacodemon", reward_scale=0.01, total_timesteps=2048,
                              num_envs=2, num_steps=256, num_minibatches=2, update_epochs=1, cuda=False,
                              image_every=0, runs_dir=str(tmp_path / "runs")))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env"] == str(cfg.resolve()) and run_dir.name.startswith("my_basic__camal__1__")
    assert (config["targets"], config["reward_scale"]) == ("Cacodemon", 0.01)

    preview(PreviewArgs(env=str(cfg), targets="Cacodemon", frames=2, out=str(tmp_path / "preview.png")))
    assert (tmp_path / "preview.png").stat().st_size > 0

    result = evaluate_attention(AttentionArgs(run=str(run_dir), episodes=1, deletion_steps=4, video=False,
                                              cuda=False))
    assert result["env"] == str(cfg.resolve()) and result["frames_used"] > 0
    assert math.isfinite(result["means"]["relevance_mass_chance"])
    shifted = evaluate_shift(ShiftArgs(run=str(run_dir), episodes=1, cuda=False))
    assert 0 <= shifted["means"]["shift_action_agreement"] <= 1

    message = exit_message(aggregate, AggregateArgs(runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "out"),
                                                    reps=50))
    assert f"eval/random_baseline.py --env {cfg.resolve()}" in message
    constants = tmp_path / "normalisation.json"
    random_baseline(BaselineArgs(env=str(cfg), episodes=20, r_max=95.0, out=str(constants)))
    aggregate(AggregateArgs(runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "out"), reps=50,
                            normalisation=str(constants)))
    assert (tmp_path / "out" / "aggregate.csv").exists() and (tmp_path / "out" / "interval_estimates.png").exists()


@pytest.mark.slow
def test_random_baseline_reproduces_basics_r_random(tmp_path):
    """The record's R_random (-162.6 +- 4.2 over 2000 episodes) within 2 combined standard errors."""
    entry = random_baseline(BaselineArgs(env="basic", episodes=400, out=str(tmp_path / "n.json")))
    assert entry["episodes"] == 400 and entry["r_max"] == SCENARIOS["basic"].r_max
    record_standard_error = 4.2
    assert abs(entry["r_random"] - SCENARIOS["basic"].r_random) <= 2 * math.hypot(entry["r_random_se"],
                                                                                   record_standard_error)
    assert json.loads((tmp_path / "n.json").read_text())["basic"]["r_random"] == entry["r_random"]
