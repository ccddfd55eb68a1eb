"""ViZDoom scenarios as gymnasium environments whose observations carry the target mask.

Built on vizdoom's own gymnasium environment (``VizdoomScenarioEnv``) with the paper's
preprocessing: frame skip 4, grey 84x84 frames, a stack of the last 4, plus the binary mask of the
scenario's target objects (from the label buffer) for the newest frame. Observations are dicts:

    {"pixels": uint8 (4, 84, 84), "mask": uint8 (84, 84)}   # mask: 1 = target pixel

Learning uses a transformed reward (and, where the scenario's record says so, a bonus for health
gained); ``info["episode"]`` (RecordEpisodeStatistics, inside both) always holds the true episodic
return.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import cv2
import gymnasium as gym
import numpy as np
from gymnasium.wrappers import (
    ClipReward,
    FrameStackObservation,
    RecordEpisodeStatistics,
    RecordVideo,
    TimeLimit,
    TransformReward,
)
from vizdoom import GameVariable
from vizdoom.gymnasium_wrapper.gymnasium_env_defns import VizdoomScenarioEnv

from envs.worker import prepare_worker, stop_workers
from masks import label_mask, targets_for
from scenarios import SCENARIOS, Scenario, check_scenario, config_path, wad_path  # noqa: F401 (SCENARIOS: re-exported)

FRAME_SKIP = 4
FRAME_SIZE = 84
STACK_SIZE = 4
# The engine renders at this resolution; frames and masks are then resized to 84x84.
SCREEN_RESOLUTION = "RES_160X120"


REWARD_TRANSFORMS = ("scale", "clip", "none")


def reward_scale_for(spec: Scenario, reward_transform: str, reward_scale: float | None = None) -> float | None:
    """The factor of the ``scale`` transform: ``reward_scale`` if given, else the scenario's; a custom
    scenario has none, so its reward transform must be chosen explicitly."""
    if reward_transform not in REWARD_TRANSFORMS:
        raise ValueError(f"unknown reward transform '{reward_transform}'; valid: {', '.join(REWARD_TRANSFORMS)}")
    if reward_transform != "scale":
        return None
    scale = spec.reward_scale if reward_scale is None else reward_scale
    if scale is None:
        raise ValueError(f"custom scenario {spec.name} has no reward scale: give --reward-scale (README, Custom "
                         f"scenarios, says how to pick it) or --reward-transform clip or none")
    if not scale > 0:
        raise ValueError(f"the reward scale must be > 0, got {scale}")
    return scale


def keep_open_files_from_engines() -> None:
    """Mark every file this process has open (but stdin, stdout and stderr) close-on-exec, so that an engine,
    a program ViZDoom starts, does not inherit them. An engine orphaned by a killed worker (it does not
    notice its parent's death) would otherwise hold them open for good: among them a study's run lock
    (experiments/study.py), on which the run's retry would then wait forever."""
    fd_folder = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    for name in os.listdir(fd_folder):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed by now
                pass


def make_doom_env(scenario: str, render_mode: str | None = None) -> VizdoomScenarioEnv:
    """The raw vizdoom gymnasium env: frame skip 4, grey screen, label buffer on, one button at a time.
    ``scenario``: a stock short name or a .cfg path (README, Custom scenarios)."""
    spec = check_scenario(scenario)
    keep_open_files_from_engines()
    return VizdoomScenarioEnv(
        config_path(spec),
        doom_scenario_path=wad_path(spec),
        frame_skip=FRAME_SKIP,
        max_buttons_pressed=1,
        render_mode=render_mode,
        labels_buffer_enabled=True,
        screen_format="GRAY8",
        screen_resolution=SCREEN_RESOLUTION,
    )


class GreyScreen(gym.ObservationWrapper):
    """{screen, ...} -> the grey screen resized to 84x84 (the terminal observation stays all zeros)."""

    def __init__(self, env: gym.Env, size: int = FRAME_SIZE):
        super().__init__(env)
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)

    def observation(self, observation: dict) -> np.ndarray:
        return cv2.resize(observation["screen"][..., 0], (self.size, self.size), interpolation=cv2.INTER_AREA)


class WithNewestMask(gym.ObservationWrapper):
    """Stacked frames -> {"pixels": the stacked frames, "mask": target mask of the newest frame}.

    The mask comes from the engine's current state, i.e. the newest frame; at a terminal step the
    engine has no state and the mask is empty, like the all-zero terminal frame.
    """

    def __init__(self, env: gym.Env, targets: tuple[str, ...]):
        super().__init__(env)
        self.targets = targets
        self.size = env.observation_space.shape[-1]
        self.observation_space = observation_space(self.size, env.observation_space.shape[0])

    def observation(self, observation: np.ndarray) -> dict:
        state = self.env.unwrapped.state
        if state is None:
            return {"pixels": observation, "mask": np.zeros((self.size, self.size), np.uint8)}
        # Nearest-neighbour sampling commutes with the per-pixel value -> target map, so sampling the
        # label buffer first gives the same mask as resize_mask(label_mask(full buffer)), on 84x84
        # pixels instead of 160x120.
        labels_buffer = cv2.resize(state.labels_buffer, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        mask = label_mask(labels_buffer, state.labels, self.targets)
        return {"pixels": observation, "mask": mask.view(np.uint8)}


class HealthGainBonus(gym.Wrapper):
    """Adds ``bonus`` to the reward of each step in which the player's health rises (a medikit taken).

    For scenarios whose only reward for a pickup is a longer life, which the agent sees only at its
    death, many steps later (scenarios/table.py: health_gathering)."""

    def __init__(self, env: gym.Env, bonus: float):
        super().__init__(env)
        self.bonus = bonus
        self.health = 0.0

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self.health = self.unwrapped.game.get_game_variable(GameVariable.HEALTH)
        return observation, info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        if not (terminated or truncated):  # at the end the engine's health is the dead player's
            health = self.unwrapped.game.get_game_variable(GameVariable.HEALTH)
            if health > self.health:
                reward += self.bonus
            self.health = health
        return observation, reward, terminated, truncated, info


def observation_space(size: int = FRAME_SIZE, stack: int = STACK_SIZE) -> gym.spaces.Dict:
    """The observation space of ``make_env``: stacked grey frames and the newest frame's mask."""
    return gym.spaces.Dict(
        {
            "pixels": gym.spaces.Box(0, 255, (stack, size, size), np.uint8),
            "mask": gym.spaces.Box(0, 1, (size, size), np.uint8),
        }
    )


def make_env(
    scenario: str,
    targets: tuple[str, ...] | None = None,
    reward_transform: str = "scale",
    render_mode: str | None = None,
    reward_scale: float | None = None,
    screen_wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> gym.Env:
    """One preprocessed environment of a stock short name or a .cfg path. ``targets`` and
    ``reward_scale`` default to the scenario's record (scenarios/table.py); a custom scenario needs
    both (or a reward transform other than ``scale``). ``screen_wrapper`` wraps the raw engine env
    before the preprocessing (eval/shift.py's background shift)."""
    spec = check_scenario(scenario)
    scale = reward_scale_for(spec, reward_transform, reward_scale)
    targets = targets_for(scenario, targets)
    env: gym.Env = make_doom_env(scenario, render_mode=render_mode)
    if screen_wrapper is not None:
        env = screen_wrapper(env)
    if spec.max_episode_steps is not None:
        env = TimeLimit(env, spec.max_episode_steps)
    env = GreyScreen(env)
    env = FrameStackObservation(env, STACK_SIZE)
    env = WithNewestMask(env, targets)
    env = RecordEpisodeStatistics(env)  # true returns, before the bonus and the reward transform
    if spec.health_gain_bonus:
        env = HealthGainBonus(env, spec.health_gain_bonus)
    if reward_transform == "scale":
        env = TransformReward(env, lambda r, s=scale: r * s)
    elif reward_transform == "clip":
        env = ClipReward(env, -1.0, 1.0)
    return env


def env_thunks(
    scenario: str,
    num_envs: int,
    targets: tuple[str, ...] | None = None,
    reward_transform: str = "scale",
    video_dir: str | None = None,
    reward_scale: float | None = None,
) -> list[Callable[[], gym.Env]]:
    """The N env constructors of a vector env, validated here (not in N subprocesses); env 0 records
    videos to ``video_dir`` if given."""
    reward_scale = reward_scale_for(check_scenario(scenario), reward_transform, reward_scale)
    targets = targets_for(scenario, targets)
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    # each engine creates ./_vizdoom/ if missing; engines starting together can race on it and fail
    os.makedirs("_vizdoom", exist_ok=True)
    parent_pid = os.getpid()

    def thunk(index: int) -> gym.Env:
        if os.getpid() != parent_pid:  # in a worker (AsyncVectorEnv also makes env 0 here, for its spaces)
            prepare_worker(parent_pid)
        if video_dir is not None and index == 0:
            env = make_env(scenario, targets, reward_transform, render_mode="rgb_array", reward_scale=reward_scale)
            return RecordVideo(env, video_dir, disable_logger=True)
        return make_env(scenario, targets, reward_transform, reward_scale=reward_scale)

    return [functools.partial(thunk, i) for i in range(num_envs)]


class WorkerVectorEnv(gym.vector.AsyncVectorEnv):
    """gymnasium's AsyncVectorEnv whose close ends every worker and engine even when a signal or an error
    interrupts it: a worker left waiting for its command would make this process wait for it at exit."""

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        try:
            super().close_extras(timeout=timeout, terminate=terminate)
        finally:
            stop_workers(self.processes)


def async_vector_env(thunks: list[Callable[[], gym.Env]]) -> WorkerVectorEnv:
    # fork: the thunks are closures, and the workers' parent is this process
    return WorkerVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, context="fork")


def make_vector_env(
    scenario: str,
    num_envs: int,
    targets: tuple[str, ...] | None = None,
    reward_transform: str = "scale",
    asynchronous: bool = True,
    video_dir: str | None = None,
    reward_scale: float | None = None,
) -> gym.vector.VectorEnv:
    """N environments, one worker process each (gymnasium's AsyncVectorEnv; the workers leave Ctrl-C
    to the caller and end with it, see envs/worker.py), or all in this process with
    ``asynchronous=False`` (SyncVectorEnv). Make it from the main thread.

    Autoreset is same-step (as in gym<1.0, which CleanRL's PPO assumes): on a terminal step the
    returned observation and mask are the new episode's first; the all-zero terminal observation is in
    ``info["final_obs"]`` and the episode statistics in ``info["final_info"]["episode"]``.
    """
    thunks = env_thunks(scenario, num_envs, targets, reward_transform, video_dir, reward_scale)
    if not asynchronous:
        return gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return async_vector_env(thunks)


class EnvGroups:
    """N environments in G groups, each an AsyncVectorEnv of its own, stepped one group at a time, so
    that the policy acts on one group while the engines of the others step (on two cores, the forward
    pass and the engines run at once; README: Speed). Env i is env i of ``make_vector_env``: same
    seeds (``reset(seed)`` gives env i seed + i), same autoreset and infos, per group.

    The trainer acts on group g's observations, sends its actions with ``step_async(g, actions)``,
    goes on to the next group, and collects g's results with ``step_wait(g)`` just before acting on
    g again. ``slices[g]``: the envs of group g in the batch.
    """

    def __init__(self, thunks: list[Callable[[], gym.Env]], groups: int):
        if groups < 1:
            raise ValueError(f"the number of env groups must be at least 1, got {groups}")
        self.num_envs = len(thunks)
        groups = min(groups, self.num_envs)
        bounds = [self.num_envs * g // groups for g in range(groups + 1)]
        self.slices = [slice(begin, end) for begin, end in zip(bounds, bounds[1:])]
        self.groups: list[WorkerVectorEnv] = []
        try:
            for envs in self.slices:
                self.groups.append(async_vector_env(thunks[envs]))
        except BaseException:
            self.close()
            raise
        self.single_observation_space = self.groups[0].single_observation_space
        self.single_action_space = self.groups[0].single_action_space

    def reset(self, seed: int | None = None) -> tuple[dict, list[dict]]:
        """The first observations of all N envs (a dict of batched arrays) and each group's infos."""
        results = [group.reset(seed=None if seed is None else seed + envs.start)
                   for group, envs in zip(self.groups, self.slices)]
        observations = {key: np.concatenate([obs[key] for obs, _ in results]) for key in results[0][0]}
        return observations, [info for _, info in results]

    def step_async(self, group: int, actions: np.ndarray) -> None:
        self.groups[group].step_async(actions)

    def step_wait(self, group: int):
        """(observations, rewards, terminations, truncations, infos) of group ``group``'s envs."""
        return self.groups[group].step_wait()

    def close(self) -> None:
        """Close every group; a signal or an error in the middle still ends every worker and engine, also
        those of the groups whose close it never reached."""
        try:
            for group in self.groups:
                group.close()
        finally:
            stop_workers([process for group in self.groups for process in group.processes])


def make_env_groups(
    scenario: str,
    num_envs: int,
    groups: int,
    targets: tuple[str, ...] | None = None,
    reward_transform: str = "scale",
    video_dir: str | None = None,
    reward_scale: float | None = None,
) -> EnvGroups:
    """``make_vector_env``'s N environments in ``groups`` groups (at most N) for pipelined acting."""
    return EnvGroups(env_thunks(scenario, num_envs, targets, reward_transform, video_dir, reward_scale), groups)
