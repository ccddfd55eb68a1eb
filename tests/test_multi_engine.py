"""The multi-engine vector env: infos in gymnasium's layout, the same steps as SyncVectorEnv, stepping
half of the envs, worker errors, shutdown, and no process left after its parent is killed.

That its observations, rewards and autoresets match the engine frame by frame is tested in
test_envs.py (test_vector_env_matches_a_raw_engine_replay_frame_by_frame).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from envs import make_env, make_vector_env
from envs.doom import observation_space
from envs.multi_engine import MultiEngineVectorEnv, vector_infos

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
    """Same keys, and per key the same dtype, shape and values (dicts in object arrays compared by key)."""
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
                    assert np.array_equal(got, want), f"{path}[{key!r}]"


def test_vector_infos_equal_the_info_gymnasium_builds():
    assert_same_info(vector_infos(ENV_INFOS), vector_info(ENV_INFOS))
    assert_same_info(vector_infos(ENV_INFOS[::-1]), vector_info(ENV_INFOS[::-1]))


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


def without_times(info):
    """The info without RecordEpisodeStatistics' wall-clock times ("t"), which differ between runs."""
    if not isinstance(info, dict):
        return info
    return {key: without_times(value) for key, value in info.items() if key not in ("t", "_t")}


@pytest.mark.parametrize("stepping", ["whole", "halves"])
def test_steps_equal_those_of_a_sync_vector_env_of_the_same_envs(stepping):
    num_envs, steps = 4, 150
    multi = make_vector_env("basic", num_envs, engines_per_worker=1 if stepping == "halves" else 3)
    sync = make_vector_env("basic", num_envs, asynchronous=False)
    try:
        observations, infos = multi.reset(seed=3)
        expected_observations, expected_infos = sync.reset(seed=3)
        assert_same_info(observations, expected_observations)
        assert_same_info(infos, expected_infos)
        rng = np.random.default_rng(3)
        episodes = 0
        for step in range(steps):
            actions = rng.integers(0, multi.single_action_space.n, num_envs)
            if stepping == "whole":
                result = multi.step(actions)
            else:
                halves = multi.halves
                assert halves == [slice(0, 2), slice(2, 4)]
                for half in halves:
                    multi.step_async(actions[half], half)
                parts = [multi.step_wait(half) for half in halves]
                result = ({key: np.concatenate([part[0][key] for part in parts]) for key in parts[0][0]},
                          *(np.concatenate([part[i] for part in parts]) for i in (1, 2, 3)),
                          vector_infos_of_halves(multi, parts))
            expected = sync.step(actions)
            assert_same_info(result[0], expected[0], f"observations, step {step}")
            for got, want in zip(result[1:4], expected[1:4]):
                np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
                assert got.dtype == want.dtype
            assert_same_info(without_times(result[4]), without_times(expected[4]), f"infos, step {step}")
            episodes += int(expected[2].sum() + expected[3].sum())
        assert episodes >= num_envs, "too few autoresets to compare them"
    finally:
        multi.close()
        sync.close()


def vector_infos_of_halves(envs, parts) -> dict:
    """One vector info of all envs from the infos of the halves, as SyncVectorEnv would have built it."""
    env_infos = [{} for _ in range(envs.num_envs)]
    for half, (_, _, _, _, infos) in zip(envs.halves, parts):
        for index in range(half.start, half.stop):
            env_infos[index] = env_info(infos, index - half.start)
    return vector_infos(env_infos)


def env_info(infos: dict, index: int) -> dict:
    """Env ``index``'s own info dict, read back from a vector info."""
    return {key: env_info(value, index) if isinstance(value, dict) else value[index]
            for key, value in infos.items() if not key.startswith("_") and infos[f"_{key}"][index]}


def test_a_step_of_part_of_the_envs_must_cover_whole_workers_and_be_awaited():
    envs = make_vector_env("basic", 3, engines_per_worker=2)
    try:
        envs.reset(seed=0)
        assert envs.halves == [slice(0, 2), slice(2, 3)]
        with pytest.raises(ValueError, match="not whole workers"):
            envs.step_async(np.zeros(1, dtype=np.int64), slice(0, 1))
        with pytest.raises(RuntimeError, match="without a step_async"):
            envs.step_wait(slice(2, 3))
        envs.step_async(np.zeros(2, dtype=np.int64), slice(0, 2))
        with pytest.raises(RuntimeError, match="still stepping"):
            envs.step_async(np.zeros(2, dtype=np.int64), slice(0, 2))
        observations, rewards, *_ = envs.step_wait(slice(0, 2))
        assert observations["pixels"].shape[0] == rewards.shape[0] == 2
    finally:
        envs.close()


STEPPING_FOREVER = """
import numpy as np
from envs import make_vector_env
envs = make_vector_env("basic", 4, engines_per_worker=2)
envs.reset(seed=0)
print("stepping", flush=True)
while True:
    envs.step(np.zeros(4, dtype=np.int64))
"""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (children of each of its threads)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as file:
            for child in map(int, file.read().split()):
                found += [child, *descendants(child)]
    return found


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has ended; only its exit status is left)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_killing_the_process_that_made_the_env_ends_its_workers_and_engines():
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-c", STEPPING_FOREVER], cwd=root, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert process.stdout.readline().strip() == "stepping"
        tree = descendants(process.pid)
        assert len(tree) == 2 + 4, f"expected 2 workers and 4 engines, found {tree}"
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 10
    while any(map(is_running, tree)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in tree if is_running(pid)]
    for pid in left:  # do not leave them to the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running 10 s after kill -9 of their parent: {left}"
