"""Steps per second of the masked vector env against the bare engine, on the same cores.

Every setup runs N engines in parallel with random actions:

- raw engine: N processes, each a ``vizdoom.DoomGame`` from the scenario's cfg with the label buffer
  on, GRAY8 at 160x120, ``make_action(action, 4)`` in a loop (measured with and without reading
  ``get_state()``, which any consumer of the frames needs). The engines run freely, each at its
  own pace: the issue's reference.
- raw engine, lockstep: the same N engines stepped together, one thread each (``make_action``
  releases the GIL), every step waiting for all N, as any synchronous vector env must; nothing is
  done with the frames. The ceiling for a vector env that feeds a PPO rollout.
- make_vector_env: the project's vector env with masks on (gymnasium's AsyncVectorEnv, one worker
  process per engine).

Engine start-up and a short warm-up are left out of the timings; the two sides alternate for
``--repeats`` rounds and the median is reported. ``--profile`` also runs the env side in one
process (SyncVectorEnv) under cProfile and prints where the time goes.

    python benchmarks/env_throughput.py --env basic --num-envs 8 --steps 1000 --repeats 3
"""

from __future__ import annotations

import cProfile
import io
import multiprocessing as mp
import os
import pstats
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import tyro
import vizdoom as vzd

from envs.doom import FRAME_SKIP, SCENARIOS, check_scenario, make_vector_env

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
    profile: bool = False
    """Also profile the env side in one process (SyncVectorEnv) with cProfile."""


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
ENV_SETUP = "make_vector_env, masks on"


def check_args(args: Args) -> None:
    """Exit with a one-line error for values the benchmark cannot run with."""
    try:
        check_scenario(args.env)
    except ValueError as error:
        sys.exit(f"error: {error}")
    for name in ("num_envs", "steps", "repeats"):
        if getattr(args, name) < 1:
            sys.exit(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def main(args: Args) -> None:
    check_args(args)
    rates: dict[str, list[float]] = {name: [] for name in (RAW_SETUP, RAW_STATE_SETUP, LOCKSTEP_SETUP, ENV_SETUP)}
    for round_index in range(args.repeats):
        seed = args.seed + 1000 * round_index
        rates[RAW_SETUP].append(raw_steps_per_second(args.env, args.num_envs, args.steps, seed, False))
        rates[RAW_STATE_SETUP].append(raw_steps_per_second(args.env, args.num_envs, args.steps, seed, True))
        rates[LOCKSTEP_SETUP].append(raw_lockstep_steps_per_second(args.env, args.num_envs, args.steps, seed))
        rates[ENV_SETUP].append(env_steps_per_second(make_vector_env(args.env, args.num_envs), args.steps, seed))
        print(f"round {round_index + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()),
              flush=True)
    print_table(args, rates)
    if args.profile:
        print()
        print(profile_env_in_one_process(args.env, args.num_envs, args.steps, args.seed))


if __name__ == "__main__":
    main(tyro.cli(Args))
