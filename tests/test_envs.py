"""The preprocessed environments, checked against the real engine (no mocks).

The central check replays each sub-environment of a vector env in a raw engine with the same seed
and actions (the engine is deterministic given its seed) and rebuilds the expected observation from
the raw engine's state: the stack of the last four resized screens and the mask of the newest
frame, recomputed from ``state.labels``. A mask one step late, a stack not cleared at reset or an
autoreset that returns the wrong frame all break the pixel-for-pixel equality.
"""

import cv2
import numpy as np
import pytest
import vizdoom

from conftest import assert_one_line_listing
from envs.doom import (FRAME_SIZE, SCENARIOS, STACK_SIZE, make_doom_env, make_env,
                       make_env_groups, make_vector_env)
from masks.labels import KNOWN_OBJECTS, NEVER_TARGETS, resize_mask

SEED = 7


def expected_mask(state, targets) -> np.ndarray:
    """Full-resolution union of the target objects' pixels, from ``state.labels`` one by one."""
    mask = np.zeros(state.labels_buffer.shape, dtype=bool)
    for label in state.labels:
        names = {label.object_name, label.object_category}
        if names & set(targets) and not names & NEVER_TARGETS:
            mask |= state.labels_buffer == label.value
    return mask


def expected_frame(state, targets) -> tuple[np.ndarray, np.ndarray]:
    """(84x84 grey screen, 84x84 uint8 mask) of one engine state; zeros for the terminal state."""
    if state is None:
        zeros = np.zeros((FRAME_SIZE, FRAME_SIZE), np.uint8)
        return zeros, zeros.copy()
    screen = cv2.resize(state.screen_buffer, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)
    mask = resize_mask(expected_mask(state, targets), (FRAME_SIZE, FRAME_SIZE)).astype(np.uint8)
    return screen, mask


def first_observation(state, targets) -> dict:
    """At a reset the stack holds the first frame four times."""
    screen, mask = expected_frame(state, targets)
    return {"pixels": np.stack([screen] * STACK_SIZE), "mask": mask}


def next_observation(previous: dict, state, targets) -> dict:
    """Drop the oldest frame, append this state's; the mask is this state's."""
    screen, mask = expected_frame(state, targets)
    return {"pixels": np.concatenate([previous["pixels"][1:], screen[None]]), "mask": mask}


def assert_observation_equal(actual: dict, expected: dict, where: str) -> None:
    np.testing.assert_array_equal(actual["pixels"], expected["pixels"], err_msg=f"pixels, {where}")
    np.testing.assert_array_equal(actual["mask"], expected["mask"], err_msg=f"mask, {where}")


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [True, False], ids=["async", "sync"])
def test_vector_env_matches_a_raw_engine_replay_frame_by_frame(asynchronous):
    scenario, num_envs, steps = "basic", 4, 250
    targets = SCENARIOS[scenario].targets
    reward_scale = SCENARIOS[scenario].reward_scale
    vector = make_vector_env(scenario, num_envs, asynchronous=asynchronous)
    raws = [make_doom_env(scenario) for _ in range(num_envs)]
    try:
        observations, _ = vector.reset(seed=SEED)
        expected = []
        for index, raw in enumerate(raws):
            raw.reset(seed=SEED + index)
            expected.append(first_observation(raw.state, targets))
            assert_observation_equal(row(observations, index), expected[index], f"reset, env {index}")

        rng = np.random.default_rng(SEED)
        episodes_ended = 0
        for step in range(steps):
            actions = rng.integers(0, vector.single_action_space.n, size=num_envs)
            observations, rewards, terminated, truncated, info = vector.step(actions)
            for index, raw in enumerate(raws):
                where = f"step {step}, env {index}"
                _, raw_reward, raw_terminated, raw_truncated, _ = raw.step(int(actions[index]))
                assert (terminated[index], truncated[index]) == (raw_terminated, raw_truncated), where
                assert rewards[index] == pytest.approx(raw_reward * reward_scale), where
                step_observation = next_observation(expected[index], raw.state, targets)
                if raw_terminated or raw_truncated:
                    episodes_ended += 1
                    final = info["final_obs"][index]
                    assert_observation_equal(final, step_observation, f"final obs, {where}")
                    assert not final["pixels"][-1].any() and not final["mask"].any(), where
                    assert final["pixels"][:-1].any(), f"older frames of the final obs, {where}"
                    assert info["final_info"]["_episode"][index], where
                    raw.reset()
                    step_observation = first_observation(raw.state, targets)
                    assert observations["pixels"][index][-1].any(), f"the new episode's first frame, {where}"
                    assert observations["mask"][index].any(), f"basic's first frame shows the Cacodemon, {where}"
                expected[index] = step_observation
                assert_observation_equal(row(observations, index), step_observation, where)
        assert episodes_ended >= 2 * num_envs, "too few autoresets to test them"
    finally:
        vector.close()
        for raw in raws:
            raw.close()


def row(observations: dict, index: int) -> dict:
    return {key: value[index] for key, value in observations.items()}


@pytest.mark.slow
def test_observation_space_and_dtypes():
    env = make_env("basic")
    try:
        observation, _ = env.reset(seed=SEED)
        assert observation["pixels"].shape == (STACK_SIZE, FRAME_SIZE, FRAME_SIZE)
        assert observation["mask"].shape == (FRAME_SIZE, FRAME_SIZE)
        assert observation["pixels"].dtype == observation["mask"].dtype == np.uint8
        assert set(np.unique(observation["mask"])) <= {0, 1}
        assert env.observation_space.contains(observation)
    finally:
        env.close()


@pytest.mark.slow
def test_terminal_observation_is_zeros_with_an_empty_mask():
    """basic standing still ends at the engine's timeout: the last frame and its mask are empty."""
    env = make_env("basic", reward_transform="none")
    raw = make_doom_env("basic")
    try:
        env.reset(seed=SEED)
        raw.reset(seed=SEED)
        for steps in range(1, 200):
            observation, _, terminated, truncated, info = env.step(0)
            raw_observation, _, raw_terminated, raw_truncated, _ = raw.step(0)
            if terminated or truncated:
                break
        assert terminated and truncated, "at the engine timeout the wrapper reports both"
        assert (raw_terminated, raw_truncated) == (terminated, truncated)
        assert info["episode"]["l"] == steps
        assert not observation["pixels"][-1].any()
        assert not observation["mask"].any()
        assert observation["pixels"][:-1].any(), "the older frames are the episode's last real frames"
        assert raw.state is None
        assert not raw_observation["screen"].any() and not raw_observation["labels"].any()
    finally:
        env.close()
        raw.close()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["take_cover", "defend_the_line"])
def test_scenarios_without_engine_timeout_are_capped(scenario):
    """In god mode the player cannot die, so only the cap ends the episode."""
    cap = SCENARIOS[scenario].max_episode_steps
    assert cap == 525
    env = make_env(scenario)
    try:
        env.reset(seed=SEED)
        env.unwrapped.game.send_game_command("god")
        for steps in range(1, cap + 2):
            observation, _, terminated, truncated, info = env.step(0)
            if terminated or truncated:
                break
        assert (steps, terminated, truncated) == (cap, False, True)
        assert info["episode"]["l"] == cap
        assert observation["pixels"][-1].any(), "a truncated episode's last frame is a real frame"
    finally:
        env.close()


def episode_rewards(reward_transform: str) -> tuple[list[float], float]:
    """Per-step learning rewards and the recorded true return of one seeded basic episode."""
    env = make_env("basic", reward_transform=reward_transform)
    rng = np.random.default_rng(SEED)
    rewards = []
    try:
        env.reset(seed=SEED)
        while True:
            _, reward, terminated, truncated, info = env.step(int(rng.integers(0, env.action_space.n)))
            rewards.append(float(reward))
            if terminated or truncated:
                return rewards, float(info["episode"]["r"])
    finally:
        env.close()


@pytest.mark.slow
def test_reward_transforms_keep_the_true_return_in_episode_statistics():
    true_rewards, true_return = episode_rewards("none")
    assert true_return == pytest.approx(sum(true_rewards))
    assert max(abs(r) for r in true_rewards) > 1, "the episode should have rewards that clipping changes"

    scaled_rewards, scaled_return = episode_rewards("scale")
    clipped_rewards, clipped_return = episode_rewards("clip")
    assert len(scaled_rewards) == len(clipped_rewards) == len(true_rewards), "same seeded episode"
    np.testing.assert_allclose(scaled_rewards, np.multiply(true_rewards, SCENARIOS["basic"].reward_scale))
    np.testing.assert_allclose(clipped_rewards, np.clip(true_rewards, -1.0, 1.0))
    assert scaled_return == pytest.approx(true_return)
    assert clipped_return == pytest.approx(true_return)


@pytest.mark.slow
def test_health_gain_bonus_rewards_each_pickup_in_learning_and_never_in_the_true_return():
    """health_gathering: +50 (before the scale) on each step health rises; info["episode"] stays true."""
    bonus = SCENARIOS["health_gathering"].health_gain_bonus
    assert bonus > 0
    env = make_env("health_gathering", reward_transform="none")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    learning_return, pickups, step = 0.0, 0, 0
    health = env.unwrapped.game.get_game_variable(vizdoom.GameVariable.HEALTH)
    while True:
        # mostly forward (action 3; 0 is no-op, 1 and 2 turn), so that the player runs over medikits
        _, reward, terminated, truncated, info = env.step(3 if step % 4 else int(rng.integers(4)))
        step += 1
        learning_return += reward
        if terminated or truncated:
            break
        new_health = env.unwrapped.game.get_game_variable(vizdoom.GameVariable.HEALTH)
        pickups += new_health > health
        health = new_health
    env.close()
    assert pickups >= 1, "the seeded episode should take at least one medikit"
    assert learning_return == pytest.approx(info["episode"]["r"] + pickups * bonus)
    assert all(not SCENARIOS[name].health_gain_bonus for name in ("basic", "defend_the_center", "defend_the_line"))


PLAYABLE = [name for name in SCENARIOS if name != "deathmatch"]


@pytest.mark.parametrize("make", [make_env, lambda name: make_vector_env(name, 2)], ids=["env", "vector"])
def test_unknown_scenario_names_the_valid_ones(make):
    with pytest.raises(ValueError, match="no_such_map") as error:
        make("no_such_map")
    assert_one_line_listing(str(error.value), PLAYABLE)


@pytest.mark.parametrize(
    "make",
    [lambda: make_env("basic", targets=("Cacodemon", "Cyberdemon")),
     lambda: make_vector_env("basic", 2, targets=("Cyberdemon",))],
    ids=["env", "vector"],
)
def test_unknown_target_names_the_valid_ones(make):
    with pytest.raises(ValueError, match="Cyberdemon") as error:
        make()
    assert_one_line_listing(str(error.value), KNOWN_OBJECTS)


def test_deathmatch_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="deathmatch") as error:
        make_env("deathmatch")
    message = str(error.value)
    assert "\n" not in message and "delta" in message
    assert_one_line_listing(message, PLAYABLE)


def test_unknown_reward_transform_is_refused():
    with pytest.raises(ValueError, match="scale"):
        make_env("basic", reward_transform="normalise")


@pytest.mark.slow
@pytest.mark.parametrize("groups", [1, 2, 3])
def test_env_groups_step_exactly_like_one_vector_env(groups):
    """Stepping N envs group by group (the trainer's pipelined acting) changes nothing they return."""
    num_envs, steps = 5, 60
    actions = np.random.default_rng(0).integers(0, 4, size=(steps, num_envs))
    vector = make_vector_env("basic", num_envs)
    grouped = make_env_groups("basic", num_envs, groups)
    try:
        assert [s.stop - s.start for s in grouped.slices] in ([5], [2, 3], [1, 2, 2])
        expected, _ = vector.reset(seed=7)
        observed, _ = grouped.reset(seed=7)
        episodes_ended = 0
        for step in range(steps):
            for key in ("pixels", "mask"):
                np.testing.assert_array_equal(observed[key], expected[key], err_msg=f"{key} at step {step}")
            expected, reward, terminated, truncated, infos = vector.step(actions[step])
            for group, envs in enumerate(grouped.slices):  # all sent first, then collected, as the trainer does
                grouped.step_async(group, actions[step, envs])
            results = [grouped.step_wait(group) for group in range(len(grouped.slices))]
            observed = {key: np.concatenate([obs[key] for obs, *_ in results]) for key in expected}
            np.testing.assert_array_equal(np.concatenate([r for _, r, *_ in results]), reward)
            np.testing.assert_array_equal(np.concatenate([t for _, _, t, *_ in results]), terminated)
            np.testing.assert_array_equal(np.concatenate([t for *_, t, _ in results]), truncated)
            episodes_ended += int(terminated.sum())
        assert episodes_ended > 0, "the steps should cover an autoreset"
    finally:
        vector.close()
        grouped.close()


def test_env_groups_are_refused_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        make_env_groups("basic", 2, 0)
