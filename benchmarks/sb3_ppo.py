"""The peer PPO for the speed comparison: stable-baselines3's CnnPolicy on the same env and batch sizes.

    pip install -r benchmarks/requirements.txt
    python benchmarks/sb3_ppo.py --env basic --total-timesteps 4096

SB3 steps the project's own vector env (`envs.make_vector_env`: same engines, preprocessing,
reward transform and worker processes) through a small adapter that hands it the "pixels"
observation, so that the two trainers differ only in the learner. Its CnnPolicy is the Nature CNN
with linear actor and critic heads on the 512 features (SB3's default `net_arch=[]` for NatureCNN),
with CleanRL's ppo_atari flags, which `agents/ppo_camal.py` uses: 8 envs x 128 steps, minibatch 256,
4 epochs, lr 2.5e-4 annealed to 0, clip 0.1 (value clipped too), entropy 0.01, value 0.5, grad norm
0.5, Adam eps 1e-5. Prints the steps per second of `learn()` (env creation left out, as
`agents/ppo_camal.py` leaves it out of its `charts/SPS`) as the last line, `sps N`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import tyro

from envs import check_scenario, make_vector_env

try:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecEnv
except ImportError:
    sys.exit("error: the SB3 comparison needs stable-baselines3: pip install -r benchmarks/requirements.txt")


@dataclass
class Args:
    env: str = "basic"
    """scenario (see envs.SCENARIOS)"""
    total_timesteps: int = 4096
    """environment steps to train for"""
    seed: int = 1
    """seed of SB3 (torch, numpy) and of the environments"""
    num_envs: int = 8
    """parallel environments (CleanRL's and agents/ppo_camal.py's default)"""
    num_steps: int = 128
    """steps per environment per rollout"""


class PixelsVecEnv(VecEnv):
    """SB3's VecEnv interface over a gymnasium vector env of `envs.make_env`, observing "pixels" only."""

    def __init__(self, envs):
        self.envs = envs
        super().__init__(envs.num_envs, envs.single_observation_space["pixels"], envs.single_action_space)

    def reset(self):
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, _ = self.envs.reset(seed=seed)
        self._reset_seeds()
        return obs["pixels"]

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminations, truncations, infos = self.envs.step(self._actions)
        dones = np.logical_or(terminations, truncations)
        step_infos: list[dict] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            # SB3 bootstraps a truncated episode from its terminal observation, as CleanRL does not
            step_infos[i]["terminal_observation"] = infos["final_obs"][i]["pixels"]
            step_infos[i]["TimeLimit.truncated"] = bool(truncations[i] and not terminations[i])
            episode = infos["final_info"]["episode"]
            step_infos[i]["episode"] = {"r": float(episode["r"][i]), "l": int(episode["l"][i])}
        return obs["pixels"], rewards.astype(np.float32), dones, step_infos

    def close(self) -> None:
        self.envs.close()

    def get_attr(self, attr_name, indices=None):
        if attr_name == "render_mode":
            return [None] * len(self._indices(indices))
        raise NotImplementedError(f"PixelsVecEnv.get_attr({attr_name!r})")

    def set_attr(self, attr_name, value, indices=None) -> None:
        raise NotImplementedError("PixelsVecEnv.set_attr")

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        raise NotImplementedError("PixelsVecEnv.env_method")

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._indices(indices))

    def _indices(self, indices):
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices


def main(args: Args) -> float:
    try:
        check_scenario(args.env)
    except ValueError as error:
        sys.exit(f"error: {error}")
    batch = args.num_envs * args.num_steps
    if args.total_timesteps < batch:
        sys.exit(f"error: --total-timesteps {args.total_timesteps} is less than one batch ({batch} steps)")
    env = PixelsVecEnv(make_vector_env(args.env, args.num_envs))
    try:
        model = PPO("CnnPolicy", env, learning_rate=lambda remaining: 2.5e-4 * remaining, n_steps=args.num_steps,
                    batch_size=batch // 4, n_epochs=4, gamma=0.99, gae_lambda=0.95, clip_range=0.1,
                    clip_range_vf=0.1, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, seed=args.seed,
                    device="cpu", verbose=0)
        start = time.perf_counter()
        model.learn(total_timesteps=args.total_timesteps)
        sps = model.num_timesteps / (time.perf_counter() - start)
    finally:
        env.close()
    print(f"sps {sps:.1f}", flush=True)
    return sps


if __name__ == "__main__":
    main(tyro.cli(Args))
