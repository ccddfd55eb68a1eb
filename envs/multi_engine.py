"""A vector env whose worker processes each step several engines at once: fewer processes and messages.

gymnasium's AsyncVectorEnv runs one env per process and exchanges one pipe message per env and step.
A ViZDoom step (frame skip 4, 160x120) costs only ~250 us of CPU, so on a few cores that messaging
and the process switches cost about as much as the engine (README, "Speed"). Here each of W worker
processes holds a ThreadedVectorEnv of K envs: a gymnasium SyncVectorEnv (same-step autoreset) whose
K engines step concurrently from K threads, since ``make_action`` releases the GIL. The worker writes
the K observations into shared memory with one copy per key and sends one message per step. Env i
lives in worker i // K, so env indices, seeds (seed + i) and infos are those of a SyncVectorEnv of
all N envs.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_shared_memory, iterate, read_from_shared_memory

WORKER_TIMEOUT_S = 120


class MultiEngineVectorEnv(gym.vector.VectorEnv):
    """N envs in ``len(env_fns_per_worker)`` processes; worker w builds its envs from its list of thunks.

    ``single_observation_space`` must be given (it sizes the shared memory, which the workers inherit
    when they are forked); the action space comes from worker 0's first env.
    """

    def __init__(self, env_fns_per_worker: Sequence[Sequence[Callable[[], gym.Env]]],
                 single_observation_space: gym.Space, copy: bool = True):
        sizes = [len(fns) for fns in env_fns_per_worker]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"every worker needs at least one env; got envs per worker {sizes}")
        self.num_envs = sum(sizes)
        self.copy = copy
        starts = [sum(sizes[:index]) for index in range(len(sizes))]
        self.slices = [slice(start, start + size) for start, size in zip(starts, sizes)]
        self.single_observation_space = single_observation_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        context = mp.get_context("fork")  # the thunks are closures and the workers inherit the memory
        shared = create_shared_memory(single_observation_space, self.num_envs, ctx=context)
        self._observations = read_from_shared_memory(single_observation_space, shared, self.num_envs)
        self.pipes, self.processes = [], []
        self.closed = False
        try:
            for index, (fns, part) in enumerate(zip(env_fns_per_worker, self.slices)):
                parent, child = context.Pipe()
                worker_args = (index, list(fns), single_observation_space, self.num_envs, part, shared, child)
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

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        for pipe, part in zip(self.pipes, self.slices):
            pipe.send(("reset", (seeds[part], options)))
        infos = merge_vector_infos([self._receive(pipe) for pipe in self.pipes], self.slices)
        return self._read_observations(), infos

    def step(self, actions):
        actions = np.asarray(actions)
        for pipe, part in zip(self.pipes, self.slices):
            pipe.send(("step", actions[part]))
        results = [self._receive(pipe) for pipe in self.pipes]
        rewards = np.concatenate([r[0] for r in results])
        terminations = np.concatenate([r[1] for r in results])
        truncations = np.concatenate([r[2] for r in results])
        infos = merge_vector_infos([r[3] for r in results], self.slices)
        return self._read_observations(), rewards, terminations, truncations, infos

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

    def _read_observations(self):
        if not self.copy:
            return self._observations
        return {key: value.copy() for key, value in self._observations.items()} if isinstance(
            self._observations, dict) else self._observations.copy()

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


def _worker(index: int, env_fns: list, space: gym.Space, num_envs: int, part: slice, shared, pipe) -> None:
    # Ctrl-C / SIGTERM go to the trainer, which stops cleanly and then closes its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    envs = None
    try:
        envs = ThreadedVectorEnv(env_fns, copy=False)
        if envs.single_observation_space != space:
            raise ValueError(f"the envs' observation space {envs.single_observation_space} is not the declared {space}")
        observations = read_from_shared_memory(space, shared, num_envs)
        pipe.send(("ok", envs.single_action_space))
        while True:
            command, data = pipe.recv()
            if command == "reset":
                seeds, options = data
                obs, infos = envs.reset(seed=seeds, options=options)
                _write(observations, part, obs)
                pipe.send(("ok", infos))
            elif command == "step":
                obs, rewards, terminations, truncations, infos = envs.step(data)
                _write(observations, part, obs)
                pipe.send(("ok", (rewards, terminations, truncations, infos)))
            elif command == "close":
                break
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
    except Exception as error:  # noqa: BLE001 - reported to the main process, which raises it
        try:
            pipe.send(("error", f"worker {index}: {type(error).__name__}: {error}\n{traceback.format_exc()}"))
        except OSError:
            pass
    finally:
        if envs is not None:
            envs.close()
        pipe.close()


def _write(shared_views, part: slice, batch) -> None:
    if isinstance(batch, dict):
        for key, value in batch.items():
            shared_views[key][part] = value
    else:
        shared_views[part] = batch


def merge_vector_infos(infos: list[dict], parts: list[slice]) -> dict:
    """One vector info dict from the workers' (each covers the envs of its slice), as SyncVectorEnv
    would have built it for all envs: arrays concatenated, absent entries filled as gymnasium fills
    them (zeros, False masks, None objects)."""
    merged: dict = {}
    keys = dict.fromkeys(key for info in infos for key in info)
    for key in keys:
        values = [info.get(key) for info in infos]
        if any(isinstance(value, dict) for value in values):
            merged[key] = merge_vector_infos([value or {} for value in values], parts)
            continue
        template = next(value for value in values if value is not None)
        filled = []
        for value, part in zip(values, parts):
            if value is None:
                size = part.stop - part.start
                value = (np.full(size, None, dtype=object) if template.dtype == object
                         else np.zeros((size, *template.shape[1:]), dtype=template.dtype))
            filled.append(value)
        merged[key] = np.concatenate(filled)
    return merged


class ThreadedVectorEnv(gym.vector.SyncVectorEnv):
    """A SyncVectorEnv (same-step autoreset) whose envs step concurrently, one thread each.

    ViZDoom's ``make_action`` releases the GIL while its engine process plays the tics, so K engines
    driven from K threads of one process play in parallel; only the Python part of each step is
    serialised. Infos and observations are assembled exactly as SyncVectorEnv does it.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], copy: bool = True):
        super().__init__(env_fns, copy=copy, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self._pool = ThreadPoolExecutor(self.num_envs) if self.num_envs > 1 else None

    def _step_one(self, index: int, action) -> tuple:
        """(obs, reward, terminated, truncated, info, (final obs, final info) or None) of one env."""
        env = self.envs[index]
        observation, reward, terminated, truncated, info = env.step(action)
        final = None
        if terminated or truncated:
            final = (observation, info)
            observation, info = env.reset()
        return observation, reward, terminated, truncated, info, final

    def step(self, actions):
        actions = list(iterate(self.action_space, actions))
        indices = range(self.num_envs)
        if self._pool is None:
            results = [self._step_one(0, actions[0])]
        else:
            results = list(self._pool.map(self._step_one, indices, actions))
        infos: dict = {}
        for index, (observation, reward, terminated, truncated, info, final) in enumerate(results):
            self._env_obs[index] = observation
            self._rewards[index], self._terminations[index], self._truncations[index] = reward, terminated, truncated
            if final is not None:
                infos = self._add_info(infos, {"final_obs": final[0], "final_info": final[1]}, index)
            infos = self._add_info(infos, info, index)
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        self._autoreset_envs = np.logical_or(self._terminations, self._truncations)
        return (deepcopy(self._observations) if self.copy else self._observations, np.copy(self._rewards),
                np.copy(self._terminations), np.copy(self._truncations), infos)

    def close_extras(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        super().close_extras(**kwargs)
