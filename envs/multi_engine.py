"""A vector env whose worker processes each step several engines at once: fewer processes and messages.

gymnasium's AsyncVectorEnv runs one env per process and exchanges one pipe message per env and step.
A ViZDoom step (frame skip 4, 160x120) costs only ~250 us of CPU, so on a few cores that messaging
and the process switches cost about as much as the engine (README, "Speed"). Here each of W worker
processes holds K envs and steps them from K threads, since ``make_action`` releases the GIL; each
thread writes its env's observation into shared memory, and the worker sends one message per step.
Env i lives in worker i // K, so env indices, seeds (seed + i), observations and infos are those of
a gymnasium SyncVectorEnv of all N envs with same-step autoreset. Only gymnasium's public API is used.

No process outlives the one that made the env: a worker sees its parent die (end of file on its pipe,
or the parent-death signal on Linux) and then ends its engines, which do not end on their own.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import (
    batch_space,
    create_shared_memory,
    iterate,
    read_from_shared_memory,
    write_to_shared_memory,
)

WORKER_TIMEOUT_S = 120
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Sent to a worker when the process that made it dies; SIGINT and SIGTERM stay the trainer's.
PARENT_DEATH_SIGNAL = signal.SIGUSR1


class MultiEngineVectorEnv(gym.vector.VectorEnv):
    """N envs in ``len(env_fns_per_worker)`` processes; worker w builds its envs from its list of thunks.

    ``single_observation_space`` must be given (it sizes the shared memory, which the workers inherit
    when they are forked); the action space comes from worker 0's first env. Make it in the main
    thread: on Linux the workers are ended when the thread that forked them ends.

    Besides ``step``, ``step_async(actions, envs)`` and ``step_wait(envs)`` step a group of envs
    held by whole workers (``halves`` gives two such groups), so that a caller can act on one group
    while the engines of the other play.
    """

    def __init__(self, env_fns_per_worker: Sequence[Sequence[Callable[[], gym.Env]]],
                 single_observation_space: gym.Space, copy: bool = True):
        sizes = [len(fns) for fns in env_fns_per_worker]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"every worker needs at least one env; got envs per worker {sizes}")
        self.num_envs = sum(sizes)
        self.copy = copy
        starts = np.cumsum([0] + sizes).tolist()
        self.slices = [slice(start, stop) for start, stop in zip(starts[:-1], starts[1:])]
        self.single_observation_space = single_observation_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        context = mp.get_context("fork")  # the thunks are closures and the workers inherit the memory
        shared = create_shared_memory(single_observation_space, self.num_envs, ctx=context)
        self._observations = read_from_shared_memory(single_observation_space, shared, self.num_envs)
        self.pipes, self.processes = [], []
        self.waiting: set[int] = set()  # workers whose step answer has not been read
        self.closed = False
        try:
            for index, (fns, part) in enumerate(zip(env_fns_per_worker, self.slices)):
                parent, child = context.Pipe()
                # the child must hold no parent end (its own or an earlier worker's), or it would
                # never see end of file when the parent dies
                worker_args = (index, list(fns), single_observation_space, self.num_envs, part, shared, child,
                               [*self.pipes, parent], os.getpid())
                process = context.Process(target=_worker, args=worker_args, daemon=True)
                process.start()
                child.close()
                self.pipes.append(parent)
                self.processes.append(process)
            action_spaces = [self._receive(pipe) for pipe in self.pipes]
        except BaseException:
            self.close()
            raise
        self.single_action_space = action_spaces[0]
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    @property
    def halves(self) -> list[slice]:
        """Two groups of envs held by whole workers (one group when there is a single worker)."""
        if len(self.slices) == 1:
            return [slice(0, self.num_envs)]
        middle = self.slices[len(self.slices) // 2].start
        return [slice(0, middle), slice(middle, self.num_envs)]

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        if self.waiting:
            raise RuntimeError("reset while a step is pending: call step_wait first")
        for pipe, part in zip(self.pipes, self.slices):
            pipe.send(("reset", (seeds[part], options)))
        infos = vector_infos([info for pipe in self.pipes for info in self._receive(pipe)])
        return self._read_observations(slice(0, self.num_envs)), infos

    def step(self, actions):
        everything = slice(0, self.num_envs)
        self.step_async(actions, everything)
        return self.step_wait(everything)

    def step_async(self, actions, envs: slice | None = None) -> None:
        """Send the actions of ``envs`` (a group of whole workers, default all) to their workers."""
        workers = self._workers_of(envs)
        if self.waiting.intersection(workers):
            raise RuntimeError(f"envs {envs} are still stepping: call step_wait first")
        actions = np.asarray(actions)
        offset = self.slices[workers[0]].start
        for index in workers:
            part = self.slices[index]
            self.pipes[index].send(("step", actions[part.start - offset:part.stop - offset]))
        self.waiting.update(workers)

    def step_wait(self, envs: slice | None = None):
        """(observations, rewards, terminations, truncations, infos) of the envs stepped by ``step_async``."""
        workers = self._workers_of(envs)
        if not self.waiting.issuperset(workers):
            raise RuntimeError(f"step_wait for envs {envs} without a step_async")
        self.waiting.difference_update(workers)
        results = [self._receive(self.pipes[index]) for index in workers]
        rewards, terminations, truncations = (np.concatenate([r[i] for r in results]) for i in range(3))
        infos = vector_infos([info for r in results for info in r[3]])
        part = slice(self.slices[workers[0]].start, self.slices[workers[-1]].stop)
        return self._read_observations(part), rewards, terminations, truncations, infos

    def close_extras(self, **kwargs: Any) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("close", None))
            except OSError:
                pass
        for process in self.processes:
            process.join(timeout=WORKER_TIMEOUT_S)
            if process.is_alive():  # workers ignore SIGTERM (Ctrl-C belongs to the trainer)
                process.kill()
                process.join()
        for pipe in self.pipes:
            pipe.close()

    def _workers_of(self, envs: slice | None) -> list[int]:
        start, stop, _ = (envs or slice(None)).indices(self.num_envs)
        workers = [i for i, part in enumerate(self.slices) if start <= part.start and part.stop <= stop]
        if not workers or self.slices[workers[0]].start != start or self.slices[workers[-1]].stop != stop:
            raise ValueError(f"envs {envs} are not whole workers; workers hold envs {self.slices}")
        return workers

    def _read_observations(self, part: slice):
        if isinstance(self._observations, dict):
            views = {key: value[part] for key, value in self._observations.items()}
            return {key: value.copy() for key, value in views.items()} if self.copy else views
        return self._observations[part].copy() if self.copy else self._observations[part]

    def _receive(self, pipe):
        if not pipe.poll(WORKER_TIMEOUT_S):
            raise RuntimeError(f"an env worker gave no answer in {WORKER_TIMEOUT_S} s")
        try:
            status, payload = pipe.recv()
        except EOFError:
            raise RuntimeError("an env worker died (see its output above)") from None
        if status == "error":
            raise RuntimeError(f"env worker failed: {payload}")
        return payload


def _worker(index: int, env_fns: list, space: gym.Space, num_envs: int, part: slice, shared, pipe,
            parent_ends: list, parent_pid: int) -> None:
    for end in parent_ends:
        end.close()
    # Ctrl-C / SIGTERM go to the trainer, which stops cleanly and then closes its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _end_with_parent(parent_pid)
    envs: list[gym.Env] = []
    pool = None
    try:
        for make in env_fns:
            envs.append(make())
            if envs[-1].observation_space != space:
                raise ValueError(f"the envs' observation space {envs[-1].observation_space} is not the declared {space}")
        pool = ThreadPoolExecutor(len(envs))
        actions_space = batch_space(envs[0].action_space, len(envs))
        pipe.send(("ok", envs[0].action_space))
        while True:
            command, data = pipe.recv()
            if command == "reset":
                seeds, options = data
                infos = list(pool.map(lambda i, seed: _reset_one(envs[i], seed, options, space, part.start + i, shared),
                                      range(len(envs)), seeds))
                pipe.send(("ok", infos))
            elif command == "step":
                results = list(pool.map(lambda i, action: _step_one(envs[i], action, space, part.start + i, shared),
                                        range(len(envs)), iterate(actions_space, data)))
                rewards, terminations, truncations, infos = zip(*results)
                pipe.send(("ok", (np.array(rewards, dtype=np.float64), np.array(terminations, dtype=np.bool_),
                                  np.array(truncations, dtype=np.bool_), list(infos))))
            elif command == "close":
                break
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # the parent is gone
    except Exception as error:  # noqa: BLE001 - reported to the main process, which raises it
        try:
            pipe.send(("error", f"worker {index}: {type(error).__name__}: {error}\n{traceback.format_exc()}"))
        except OSError:
            pass
    finally:
        if pool is not None:
            pool.shutdown()
        for env in envs:
            env.close()
        pipe.close()


def _reset_one(env: gym.Env, seed: int | None, options: dict | None, space: gym.Space, index: int, shared) -> dict:
    observation, info = env.reset(seed=seed, options=options)
    write_to_shared_memory(space, index, observation, shared)
    return info


def _step_one(env: gym.Env, action, space: gym.Space, index: int, shared) -> tuple:
    """(reward, terminated, truncated, info) of one env's step; same-step autoreset as SyncVectorEnv's:
    a finished episode's last observation and info go to ``info["final_obs"]`` / ``["final_info"]``."""
    observation, reward, terminated, truncated, info = env.step(action)
    if terminated or truncated:
        final = {"final_obs": observation, "final_info": info}
        observation, info = env.reset()
        info = {**final, **info}
    write_to_shared_memory(space, index, observation, shared)
    return reward, terminated, truncated, info


def _end_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel signal this worker when its parent dies, and end the engines then."""
    if not sys.platform.startswith("linux"):
        return
    signal.signal(PARENT_DEATH_SIGNAL, _kill_children_and_exit)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL))
    if os.getppid() != parent_pid:  # died before the request was in place
        _kill_children_and_exit()


def _kill_children_and_exit(*_) -> None:
    """SIGKILL this process's children (the engines ignore SIGTERM), then exit at once."""
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as file:
                children = [int(pid) for pid in file.read().split()]
        except OSError:
            continue
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    os._exit(1)


def vector_infos(env_infos: Sequence[dict]) -> dict:
    """The info dict of a gymnasium vector env from the infos of its envs, in gymnasium's layout: each
    key holds an array over the envs (int, float and bool values and numpy numbers in an array of
    their type, arrays stacked, other objects and ``final_obs`` in an object array, dicts recursively)
    with a boolean mask ``_key`` of the envs that have it; an env without the key holds zeros/None."""
    num_envs = len(env_infos)
    batched: dict = {}
    for key in dict.fromkeys(key for info in env_infos for key in info):
        present = [i for i, info in enumerate(env_infos) if key in info]
        first = env_infos[present[0]][key]
        if key != "final_obs" and isinstance(first, dict):
            batched[key] = vector_infos([info.get(key, {}) for info in env_infos])
        else:
            if key != "final_obs" and (type(first) in (int, float, bool) or isinstance(first, np.number)):
                array = np.zeros(num_envs, dtype=type(first))
            elif key != "final_obs" and isinstance(first, np.ndarray):
                array = np.zeros((num_envs, *first.shape), dtype=first.dtype)
            else:
                array = np.full(num_envs, None, dtype=object)
            for i in present:
                array[i] = env_infos[i][key]
            batched[key] = array
        mask = np.zeros(num_envs, dtype=np.bool_)
        mask[present] = True
        batched[f"_{key}"] = mask
    return batched
