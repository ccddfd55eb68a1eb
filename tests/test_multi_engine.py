"""The multi-engine vector env's plumbing: info merging, worker errors, shutdown.

That its observations, rewards, autoresets and infos match the engine frame by frame is tested in
test_envs.py (test_vector_env_matches_a_raw_engine_replay_frame_by_frame).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from envs import make_env, make_vector_env
from envs.doom import observation_space
from envs.multi_engine import MultiEngineVectorEnv, merge_vector_infos

# infos of 5 envs after one step: episode statistics, a final observation, a plain number
ENV_INFOS = [
    {},
    {"episode": {"r": 1.5, "l": 3}, "lives": 2},
    {"lives": 1},
    {"final_obs": {"pixels": np.ones(2)}, "final_info": {"episode": {"r": -0.5, "l": 7}}},
    {"episode": {"r": 4.0, "l": 9}, "lives": 3},
]


def vector_info(env_infos: list[dict]) -> dict:
    """The vector info gymnasium's own VectorEnv._add_info builds from per-env infos."""
    owner = SimpleNamespace(num_envs=len(env_infos))
    owner._add_info = functools.partial(gym.vector.VectorEnv._add_info, owner)
    merged: dict = {}
    for index, info in enumerate(env_infos):
        merged = owner._add_info(merged, info, index)
    return merged


def assert_same_info(actual: dict, expected: dict, path: str = "info") -> None:
    assert actual.keys() == expected.keys(), path
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same_info(actual[key], value, f"{path}[{key!r}]")
        else:
            assert actual[key].dtype == value.dtype, f"{path}[{key!r}]"
            assert actual[key].shape == value.shape, f"{path}[{key!r}]"
            for got, want in zip(actual[key], value):
                if isinstance(want, dict):
                    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
                else:
                    assert got == want, f"{path}[{key!r}]"


@pytest.mark.parametrize("sizes", [[2, 3], [1, 1, 1, 1, 1], [4, 1], [5]])
def test_merged_worker_infos_equal_gymnasiums_info_of_all_envs(sizes):
    starts = np.cumsum([0] + sizes[:-1])
    parts = [slice(int(start), int(start) + size) for start, size in zip(starts, sizes)]
    per_worker = [vector_info(ENV_INFOS[part]) for part in parts]
    assert_same_info(merge_vector_infos(per_worker, parts), vector_info(ENV_INFOS))


def test_an_env_that_fails_in_a_worker_raises_its_error_here():
    bad = functools.partial(make_env, "basic", targets=("NoSuchMonster",))
    with pytest.raises(RuntimeError, match="worker 1: ValueError: unknown target 'NoSuchMonster'"):
        MultiEngineVectorEnv([[functools.partial(make_env, "basic")], [bad]], observation_space())


def test_envs_whose_observations_differ_from_the_declared_space_are_refused():
    with pytest.raises(RuntimeError, match="is not the declared"):
        MultiEngineVectorEnv([[functools.partial(make_env, "basic")]], observation_space(size=42))


def test_close_ends_every_worker_process():
    envs = make_vector_env("basic", 3, engines_per_worker=2)
    processes = list(envs.processes)
    assert [part.stop - part.start for part in envs.slices] == [2, 1]
    envs.reset(seed=0)
    envs.step(np.zeros(3, dtype=np.int64))
    envs.close()
    assert not any(process.is_alive() for process in processes)


def test_engines_per_worker_must_be_positive():
    with pytest.raises(ValueError, match="engines_per_worker must be at least 1, got 0"):
        make_vector_env("basic", 2, engines_per_worker=0)
