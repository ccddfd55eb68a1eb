"""Target masks from the label buffer, checked against the real engine (no mocks).

The expected mask is recomputed here from ``state.labels`` one object at a time, independently of
``masks.label_mask``, on frames of raw environments driven by seeded random actions.
"""

import numpy as np
import pytest

from conftest import assert_one_line_listing
from envs.doom import make_doom_env
from scenarios import SCENARIOS
from masks.labels import (KNOWN_OBJECTS, NEVER_TARGETS, label_mask, parse_targets,
                          resize_mask, targets_for)

WALL, FLOOR, WEAPON = 0, 1, 255


def is_target(label, targets) -> bool:
    """A label is a target when its name or category is listed and neither is a never-target."""
    listed = label.object_name in targets or label.object_category in targets
    excluded = label.object_name in NEVER_TARGETS or label.object_category in NEVER_TARGETS
    return listed and not excluded


def expected_mask(state, targets) -> np.ndarray:
    """Union of the buffer pixels of every target object, one object at a time."""
    mask = np.zeros(state.labels_buffer.shape, dtype=bool)
    for label in state.labels:
        if is_target(label, targets):
            mask |= state.labels_buffer == label.value
    return mask


def random_play_states(scenario: str, steps: int, seed: int = 0) -> list:
    """The engine states (with label buffers) seen under a seeded random policy, resets included."""
    env = make_doom_env(scenario)
    states = []
    try:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        for _ in range(steps):
            states.append(env.state)
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
    finally:
        env.close()
    return states


@pytest.mark.slow
@pytest.mark.parametrize(
    "scenario, targets",
    [
        ("basic", SCENARIOS["basic"].targets),
        ("defend_the_center", SCENARIOS["defend_the_center"].targets),
        ("health_gathering", SCENARIOS["health_gathering"].targets),
        ("deadly_corridor", SCENARIOS["deadly_corridor"].targets),
        ("take_cover", SCENARIOS["take_cover"].targets),
        # Explosive covers BulletPuff (a never-target by name) and the Cacodemon is a Monster
        ("basic", ("Monster", "Explosive")),
    ],
)
def test_mask_is_the_union_of_target_objects(scenario, targets):
    states = random_play_states(scenario, steps=150)
    frames_with_target = 0
    for state in states:
        values = [label.value for label in state.labels]
        assert len(values) == len(set(values)), "two objects share a label value in one frame"

        mask = label_mask(state.labels_buffer, state.labels, targets)
        assert mask.dtype == bool and mask.shape == state.labels_buffer.shape == (120, 160)
        np.testing.assert_array_equal(mask, expected_mask(state, targets))

        masked_values = set(np.unique(state.labels_buffer[mask]).tolist())
        assert not masked_values & {WALL, FLOOR, WEAPON}
        target_values = {label.value for label in state.labels if is_target(label, targets)}
        assert masked_values <= target_values
        frames_with_target += bool(mask.any())
    assert frames_with_target > 0, f"no target seen in {scenario}: the test checked only empty masks"


@pytest.mark.slow
def test_basic_masks_are_nearly_never_empty():
    states = random_play_states("basic", steps=300, seed=1)
    non_empty = [label_mask(s.labels_buffer, s.labels, SCENARIOS["basic"].targets).any() for s in states]
    assert np.mean(non_empty) >= 0.95


@pytest.mark.slow
def test_health_gathering_mask_follows_medikits_in_view():
    states = random_play_states("health_gathering", steps=300, seed=2)
    with_medikit, without_medikit = [], []
    for state in states:
        non_empty = bool(label_mask(state.labels_buffer, state.labels, ("Medikit",)).any())
        in_labels = any(label.object_name == "Medikit" for label in state.labels)
        (with_medikit if in_labels else without_medikit).append(non_empty)
    assert without_medikit and with_medikit, "the random run should see frames with and without medikits"
    assert not any(without_medikit)
    assert np.mean(with_medikit) >= 0.9


def test_resize_mask_is_nearest_neighbour_sampling():
    rng = np.random.default_rng(0)
    mask = rng.random((120, 160)) < 0.3
    rows = np.arange(84) * 120 // 84
    cols = np.arange(84) * 160 // 84
    resized = resize_mask(mask, (84, 84))
    assert resized.dtype == bool and resized.shape == (84, 84)
    np.testing.assert_array_equal(resized, mask[np.ix_(rows, cols)])


def test_resize_keeps_a_small_object():
    """A 2x2 target (a far-away monster) survives the 120x160 -> 84x84 resize."""
    mask = np.zeros((120, 160), dtype=bool)
    mask[60:62, 80:82] = True
    assert resize_mask(mask, (84, 84)).any()


@pytest.mark.slow
def test_label_mask_accepts_a_buffer_with_a_channel_axis():
    states = random_play_states("basic", steps=3)
    state = states[-1]
    flat = label_mask(state.labels_buffer, state.labels, ("Cacodemon",))
    with_channel = label_mask(state.labels_buffer[..., None], state.labels, ("Cacodemon",))
    np.testing.assert_array_equal(flat, with_channel)


def test_targets_for_defaults_and_override():
    assert targets_for("basic") == ("Cacodemon",)
    assert targets_for("basic", "Monster, GreenArmor") == ("Monster", "GreenArmor")
    assert targets_for("basic", ["Medikit"]) == ("Medikit",)


@pytest.mark.parametrize("spec", ["Nope", "Cacodemon,Nope", ["Cacodemon", "Nope"]])
def test_unknown_target_names_the_valid_ones(spec):
    with pytest.raises(ValueError, match="Nope") as error:
        parse_targets(spec)
    assert_one_line_listing(str(error.value), KNOWN_OBJECTS)


@pytest.mark.parametrize("never", sorted(NEVER_TARGETS))
def test_never_targets_are_refused(never):
    with pytest.raises(ValueError, match=never) as error:
        parse_targets(never)
    assert "\n" not in str(error.value)


def test_empty_target_list_is_refused():
    with pytest.raises(ValueError):
        parse_targets(" , ")


def test_unknown_scenario_in_targets_for_names_the_valid_ones():
    with pytest.raises(ValueError, match="nope") as error:
        targets_for("nope")
    assert_one_line_listing(str(error.value), [s for s in SCENARIOS if s != "deathmatch"])


@pytest.mark.slow
def test_preview_writes_a_png(tmp_path):
    from envs.preview import Args, main

    out = tmp_path / "preview.png"
    main(Args(env="health_gathering", frames=2, every=3, out=str(out), targets="Medikit"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
