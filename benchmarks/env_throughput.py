"""Steps per second of the masked vector env against the bare engine, on the same cores.

Every setup runs N engines in parallel with random actions:

- raw engine: N processes, each a ``vizdoom.DoomGame`` from the scenario's cfg with the label buffer
  on, GRAY8 at 160x120, ``make_action(action, 4)`` in a loop (measured with and without reading
  ``get_state()``, which any consumer of the frames needs). The engines run freely, each at its
  own pace: the issue's reference.
- raw engine, lockstep: the same N engines stepped together, one thread each (``make_action``
  releases the GIL), every step waiting for all N, as any synchronous vector env must; nothing is
  done with the frames. The ceiling for a vector env that feeds a PPO rollout.
- gymnasium AsyncVectorEnv: ``envs.make_env`` with masks on, one process per engine.
- make_vector_env: the project's vector env with masks on, ``--engines-per-worker`` engines per
  worker process (default: about one worker per core).

Engine start-up and a short warm-up are left out of the timings; the two sides alternate for
``--repeats`` rounds and the median is reported. ``--profile`` also runs the env side in one
process (SyncVectorEnv) under cProfile and prints where the time goes.

``--measure rollout`` times acting as the trainer acts (the agent's forward pass on the frames,
sampling, the env step; no update), the whole vector env in lockstep against its two halves
overlapped (the forward pass on one half while the other half's engines play), and gymnasium's
AsyncVectorEnv in lockstep. ``--measure train`` times end-to-end vanilla PPO
(``agents/ppo_camal.py --attn-loss none``, SPS from its last ``charts/SPS``) with the same three.
The setups alternate within each round.

    python benchmarks/env_throughput.py --env basic --num-envs 8 --steps 1000 --repeats 3
    python benchmarks/env_throughput.py --measure rollout train --steps 500 --repeats 3
"""

from __future__ import annotations

import cProfile
import functools
import io
import multiprocessing as mp
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
import vizdoom as vzd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import agents.ppo_camal as ppo_camal
from envs.doom import FRAME_SKIP, SCENARIOS, check_scenario, make_env, make_vector_env

WARMUP_STEPS = 50


@dataclass
class Args:
    env: str = "basic"
    """Scenario name (see envs.doom.SCENARIOS)."""
    num_envs: int = 8
    """Engines run in parallel in each setup (8: the trainer's default)."""
    steps: int = 2000
    """Steps per engine in each timed round."""
    repeats: int = 3
    """Timed rounds per side, alternating raw and env; the median is reported."""
    seed: int = 0
    """Seeds the engines and the random actions."""
    engines_per_worker: int | None = None
    """Engines per worker process of make_vector_env (None: its default, about one worker per core)."""
    profile: bool = False
    """Also profile the env side in one process (SyncVectorEnv) with cProfile."""
    measure: tuple[Literal["env", "rollout", "train"], ...] = ("env",)
    """What to time: env (vector envs against the bare engine), rollout (acting: forward pass + env
    step, lockstep against halves overlapped), train (end-to-end vanilla PPO SPS per vector env)."""
    train_timesteps: int = 4096
    """Steps of each end-to-end training run of --measure train (a multiple of num_envs x 128)."""


def raw_game(scenario: str, seed: int) -> vzd.DoomGame:
    """The bare engine as the env configures it: the scenario's cfg, labels on, GRAY8, 160x120."""
    game = vzd.DoomGame()
    game.load_config(os.path.join(vzd.scenarios_path, SCENARIOS[scenario].config_file))
    game.set_labels_buffer_enabled(True)
    game.set_screen_format(vzd.ScreenFormat.GRAY8)
    game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
    game.set_window_visible(False)
    game.set_seed(seed)
    game.init()
    return game


def one_button_actions(game: vzd.DoomGame) -> list[list[float]]:
    """No button or exactly one, the action set of the env (max_buttons_pressed=1)."""
    count = game.get_available_buttons_size()
    return [[0.0] * count] + [[float(i == j) for j in range(count)] for i in range(count)]


def play_raw(game: vzd.DoomGame, actions: list, choices: np.ndarray, read_state: bool) -> None:
    for choice in choices:
        if game.is_episode_finished():
            game.new_episode()
        game.make_action(actions[choice], FRAME_SKIP)
        if read_state:
            game.get_state()


def raw_worker(scenario: str, seed: int, steps: int, read_state: bool, barrier, results) -> None:
    game = raw_game(scenario, seed)
    try:
        actions = one_button_actions(game)
        rng = np.random.default_rng(seed)
        play_raw(game, actions, rng.integers(0, len(actions), WARMUP_STEPS), read_state)
        choices = rng.integers(0, len(actions), steps)
        barrier.wait()
        start = time.perf_counter()
        play_raw(game, actions, choices, read_state)
        results.put((start, time.perf_counter()))
    finally:
        game.close()


def raw_steps_per_second(scenario: str, num_envs: int, steps: int, seed: int, read_state: bool) -> float:
    """N engine processes started together; rate = all steps / (first start to last finish)."""
    context = mp.get_context("fork")
    barrier, results = context.Barrier(num_envs), context.Queue()
    workers = [
        context.Process(target=raw_worker, args=(scenario, seed + i, steps, read_state, barrier, results))
        for i in range(num_envs)
    ]
    for worker in workers:
        worker.start()
    try:
        spans = [results.get(timeout=600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return num_envs * steps / wall


def raw_lockstep_steps_per_second(scenario: str, num_envs: int, steps: int, seed: int) -> float:
    """N engines in one process, one thread each, every step waiting for all N (with get_state)."""
    games = [raw_game(scenario, seed + i) for i in range(num_envs)]
    pool = ThreadPoolExecutor(num_envs)
    try:
        actions = one_button_actions(games[0])
        rng = np.random.default_rng(seed)

        def step(game: vzd.DoomGame, choice: int) -> None:
            play_raw(game, actions, [choice], read_state=True)

        for choices in rng.integers(0, len(actions), (WARMUP_STEPS, num_envs)):
            list(pool.map(step, games, choices))
        timed = rng.integers(0, len(actions), (steps, num_envs))
        start = time.perf_counter()
        for choices in timed:
            list(pool.map(step, games, choices))
        return num_envs * steps / (time.perf_counter() - start)
    finally:
        pool.shutdown()
        for game in games:
            game.close()


def gymnasium_async(scenario: str, num_envs: int) -> gym.vector.VectorEnv:
    """gymnasium's AsyncVectorEnv over the same preprocessed envs: one process per engine."""
    return gym.vector.AsyncVectorEnv([functools.partial(make_env, scenario)] * num_envs,
                                     autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def env_steps_per_second(envs: gym.vector.VectorEnv, steps: int, seed: int) -> float:
    try:
        num_envs = envs.num_envs
        rng = np.random.default_rng(seed)
        envs.reset(seed=seed)
        action_count = envs.single_action_space.n
        for _ in range(WARMUP_STEPS):
            envs.step(rng.integers(0, action_count, num_envs))
        choices = rng.integers(0, action_count, (steps, num_envs))
        start = time.perf_counter()
        for actions in choices:
            envs.step(actions)
        return num_envs * steps / (time.perf_counter() - start)
    finally:
        envs.close()


def profile_env_in_one_process(scenario: str, num_envs: int, steps: int, seed: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    rate = env_steps_per_second(make_vector_env(scenario, num_envs, asynchronous=False), steps, seed)
    profiler.disable()
    report = io.StringIO()
    stats = pstats.Stats(profiler, stream=report).sort_stats("tottime")
    stats.print_stats(25)
    return f"SyncVectorEnv, one process: {rate:.0f} steps/s under cProfile\n{report.getvalue()}"


def print_table(args: Args, rates: dict[str, list[float]]) -> None:
    """Median and best round per setup; the ratios are make_vector_env's steps/s over the setup's.

    On a shared machine the best round is the least disturbed by other load.
    """
    env_rates = rates[ENV_SETUP]
    print(f"\n{args.env}: {args.num_envs} engines in parallel per setup, {args.steps} steps each, "
          f"{args.repeats} rounds, {os.cpu_count()} CPUs")
    print(f"{'setup':<40}{'median/s':>10}{'best/s':>10}{'env/this median':>17}{'best':>7}   rounds")
    for name, values in rates.items():
        median, best = statistics.median(values), max(values)
        ratio_median = statistics.median(env_rates) / median
        ratio_best = max(env_rates) / best
        rounds = " ".join(f"{v:.0f}" for v in values)
        print(f"{name:<40}{median:>10.0f}{best:>10.0f}{ratio_median:>17.2f}{ratio_best:>7.2f}   {rounds}")


RAW_SETUP = "raw engine, make_action"
RAW_STATE_SETUP = "raw engine, make_action + get_state"
LOCKSTEP_SETUP = "raw engine + get_state, lockstep"
GYM_ASYNC_SETUP = "gymnasium AsyncVectorEnv, masks on"
ENV_SETUP = "make_vector_env, masks on"


def check_args(args: Args) -> None:
    """Exit with a one-line error for values the benchmark cannot run with."""
    try:
        check_scenario(args.env)
    except ValueError as error:
        sys.exit(f"error: {error}")
    for name in ("num_envs", "steps", "repeats", "train_timesteps"):
        if getattr(args, name) < 1:
            sys.exit(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.engines_per_worker is not None and args.engines_per_worker < 1:
        sys.exit(f"error: --engines-per-worker must be at least 1, got {args.engines_per_worker}")
    batch = args.num_envs * ppo_camal.Args.num_steps
    if "train" in args.measure and args.train_timesteps % batch:
        sys.exit(f"error: --train-timesteps {args.train_timesteps} is not a multiple of the batch "
                 f"(num_envs x {ppo_camal.Args.num_steps} = {batch})")


class LockstepSteps(gym.vector.VectorWrapper):
    """A vector env behind the trainer's stepping interface as one group: every step waits for all envs."""

    @property
    def halves(self) -> list[slice]:
        return [slice(0, self.num_envs)]

    def step_async(self, actions, envs: slice | None = None) -> None:
        self.pending = actions

    def step_wait(self, envs: slice | None = None):
        return self.env.step(self.pending)


OVERLAP_SETUP = "make_vector_env, halves overlapped"
MULTI_LOCKSTEP_SETUP = "make_vector_env, lockstep"
ASYNC_LOCKSTEP_SETUP = "gymnasium AsyncVectorEnv, lockstep"


def vector_env_factories(args: Args) -> dict[str, Callable[..., gym.vector.VectorEnv]]:
    """The trainer's vector env per setup, with make_vector_env's signature."""
    def overlapped(*a, **kw):
        return make_vector_env(*a, **{**kw, "engines_per_worker": args.engines_per_worker})

    def lockstep(*a, **kw):
        return LockstepSteps(overlapped(*a, **kw))

    def gymnasium(scenario, num_envs, **_):
        return LockstepSteps(gymnasium_async(scenario, num_envs))

    return {OVERLAP_SETUP: overlapped, MULTI_LOCKSTEP_SETUP: lockstep, ASYNC_LOCKSTEP_SETUP: gymnasium}


def rollout_steps_per_second(envs, steps: int, seed: int) -> float:
    """Acting as the trainer acts: per group of envs, read its step, forward pass, sample, step it."""
    try:
        torch.manual_seed(seed)
        agent = ppo_camal.Agent(envs.single_action_space.n)
        observations, _ = envs.reset(seed=seed)
        pixels = torch.as_tensor(observations["pixels"])

        def act(vector_steps: int) -> None:
            for step in range(vector_steps + 1):
                for half in envs.halves:
                    if step > 0:
                        pixels[half] = torch.as_tensor(envs.step_wait(half)[0]["pixels"])
                    if step < vector_steps:
                        with torch.no_grad():
                            action = agent.get_action_and_value(pixels[half])[0]
                        envs.step_async(action.numpy(), half)

        act(WARMUP_STEPS)
        start = time.perf_counter()
        act(steps)
        return envs.num_envs * steps / (time.perf_counter() - start)
    finally:
        envs.close()


def training_steps_per_second(args: Args, make: Callable, runs_dir: Path, name: str) -> float:
    """End-to-end SPS of a short vanilla run of agents/ppo_camal.py whose vector env ``make`` builds."""
    run_args = ppo_camal.Args(env=args.env, attn_loss="none", seed=args.seed + 1, num_envs=args.num_envs,
                              total_timesteps=args.train_timesteps, runs_dir=str(runs_dir), exp_name=name,
                              save_every=10**6, image_every=0, cuda=False)
    original = ppo_camal.make_vector_env
    ppo_camal.make_vector_env = make  # the trainer's factory, swapped for this run only
    try:
        run_dir = ppo_camal.main(run_args)
    finally:
        ppo_camal.make_vector_env = original
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars("charts/SPS")[-1].value


def measure_acting(args: Args) -> None:
    factories = vector_env_factories(args)
    if "rollout" in args.measure:
        rates: dict[str, list[float]] = {name: [] for name in factories}
        for round_index in range(args.repeats):
            for name, make in factories.items():
                envs = make(args.env, args.num_envs)
                rates[name].append(rollout_steps_per_second(envs, args.steps, args.seed + 1000 * round_index))
            print(f"rollout round {round_index + 1}/{args.repeats}: "
                  + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
        print_ratios(f"\nrollout only (agent forward pass + env step), {args.env}: {args.num_envs} envs, "
                     f"{args.steps} steps each, {args.repeats} rounds, {os.cpu_count()} CPUs", "steps/s", rates)
    if "train" in args.measure:
        rates = {name: [] for name in factories}
        with tempfile.TemporaryDirectory() as runs_dir:
            for round_index in range(args.repeats):
                for index, (name, make) in enumerate(factories.items()):
                    rates[name].append(training_steps_per_second(args, make, Path(runs_dir), f"r{round_index}s{index}"))
                print(f"train round {round_index + 1}/{args.repeats}: "
                      + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
        print_ratios(f"\nend-to-end vanilla PPO, {args.env}: {args.num_envs} envs x 128 steps, "
                     f"{args.train_timesteps} steps per run, {args.repeats} rounds, {os.cpu_count()} CPUs", "SPS", rates)


def print_ratios(title: str, unit: str, rates: dict[str, list[float]]) -> None:
    """Median per setup and the first setup's median over it; each round's ratio in brackets."""
    first = next(iter(rates.values()))
    print(title)
    print(f"{'setup':<40}{'median ' + unit:>16}{'first/this':>12}   rounds (ratio per round)")
    for name, values in rates.items():
        ratio = statistics.median(first) / statistics.median(values)
        rounds = " ".join(f"{v:.0f} ({f / v:.2f})" for v, f in zip(values, first))
        print(f"{name:<40}{statistics.median(values):>16.0f}{ratio:>12.2f}   {rounds}")


def main(args: Args) -> None:
    check_args(args)
    measure_acting(args)
    if "env" not in args.measure:
        return
    rates: dict[str, list[float]] = {name: [] for name in
                                     (RAW_SETUP, RAW_STATE_SETUP, LOCKSTEP_SETUP, GYM_ASYNC_SETUP, ENV_SETUP)}
    for round_index in range(args.repeats):
        seed = args.seed + 1000 * round_index
        rates[RAW_SETUP].append(raw_steps_per_second(args.env, args.num_envs, args.steps, seed, False))
        rates[RAW_STATE_SETUP].append(raw_steps_per_second(args.env, args.num_envs, args.steps, seed, True))
        rates[LOCKSTEP_SETUP].append(raw_lockstep_steps_per_second(args.env, args.num_envs, args.steps, seed))
        rates[GYM_ASYNC_SETUP].append(env_steps_per_second(gymnasium_async(args.env, args.num_envs), args.steps, seed))
        envs = make_vector_env(args.env, args.num_envs, engines_per_worker=args.engines_per_worker)
        rates[ENV_SETUP].append(env_steps_per_second(envs, args.steps, seed))
        print(f"round {round_index + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()),
              flush=True)
    print_table(args, rates)
    if args.profile:
        print()
        print(profile_env_in_one_process(args.env, args.num_envs, args.steps, args.seed))


if __name__ == "__main__":
    main(tyro.cli(Args))
