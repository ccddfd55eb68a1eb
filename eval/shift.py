"""Background shift: does a trained agent still act the same when walls, floor and ceiling change?

    python eval/shift.py runs/basic__camal__1__1700000000                 # 10 episodes each way

The agent plays N episodes (seeds seed, seed+1, ...) on the normal frames, then N episodes with the
same seeds on shifted frames: every pixel that the label buffer assigns to no object (in vizdoom 1.3.2
the value 0 marks walls and 1 floor and ceiling; objects, the weapon ``Self`` included, get the values
listed in ``state.labels``) is replaced by a fixed noise texture of the frame's own mean background
brightness. Objects (targets or not) and the weapon are left as they are. While it plays the shifted
episodes, an unshifted copy of the game runs in lockstep (same seed, same actions: the engine is
deterministic), so every shifted frame has its unshifted twin; action agreement is the fraction of
frames where argmax pi is the same on both. Writes shift_eval.json into the run folder (or --out):
``means`` holds ``shift_return_ratio`` (mean return shifted / mean return unshifted; undefined when
the unshifted mean is <= 0) and ``shift_action_agreement``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import gymnasium as gym
import numpy as np
import torch
import tyro
from tqdm import tqdm

from envs import make_env
from eval.attention import EvalError, LoadedAgent, load_agent, roll_out

RESULT_FILE = "shift_eval.json"
TEXTURE_SEED = 2024
"""seed of the fixed noise texture (the same texture for every frame, run and method)"""
TEXTURE_CONTRAST = 40.0
"""standard deviation of the noise texture, in grey levels (0-255)"""


@dataclass
class Args:
    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR_OR_CHECKPOINT")]
    """run folder (holds config.json and checkpoint.pt) or a checkpoint file inside one"""
    episodes: int = 10
    """episodes played on the normal frames, and as many on the shifted frames (same seeds)"""
    seed: int = 0
    """episode i is reset with seed + i; also seeds action sampling"""
    greedy: bool = False
    """act with argmax pi instead of sampling from pi (sampling, the default, is how the agent trained)"""
    out: str | None = None
    """output folder for shift_eval.json (None: the run folder)"""
    cuda: bool = True
    """use CUDA when it is available"""


def background(labels_buffer: np.ndarray, labels) -> np.ndarray:
    """Bool mask of the pixels of no object: the values of ``labels_buffer`` absent from ``state.labels``
    (vizdoom 1.3.2: 0 = walls, 1 = floor and ceiling)."""
    return ~np.isin(labels_buffer, [label.value for label in labels])


class BackgroundShift(gym.ObservationWrapper):
    """On the raw engine env (before any preprocessing): background pixels of ``obs["screen"]`` (GRAY8)
    -> a fixed noise texture with the mean brightness of the frame's own background."""

    def __init__(self, env: gym.Env, seed: int = TEXTURE_SEED, contrast: float = TEXTURE_CONTRAST):
        super().__init__(env)
        height, width = env.observation_space["screen"].shape[:2]
        self.noise = contrast * np.random.default_rng(seed).standard_normal((height, width))

    def observation(self, observation: dict) -> dict:
        state = self.env.unwrapped.state
        if state is None:  # terminal step: the all-zero frame has no labels
            return observation
        screen = observation["screen"][..., 0]
        replaced = background(state.labels_buffer, state.labels)
        if not replaced.any():
            return observation
        texture = np.clip(np.rint(screen[replaced].mean() + self.noise[replaced]), 0, 255).astype(np.uint8)
        shifted = screen.copy()
        shifted[replaced] = texture
        return {**observation, "screen": shifted[..., None]}


def shifted_rollout(loaded: LoadedAgent, episodes: int, seed: int, greedy: bool,
                    device: torch.device) -> tuple[list[float], int, int]:
    """(returns on shifted frames, frames where argmax pi agrees with the unshifted twin, frames)."""
    config = loaded.config
    kwargs = dict(targets=config.get("targets"), reward_transform=config.get("reward_transform", "scale"),
                  reward_scale=config.get("reward_scale"))
    shifted_env = make_env(config["env"], screen_wrapper=BackgroundShift, **kwargs)
    twin_env = make_env(config["env"], **kwargs)
    generator = torch.Generator().manual_seed(seed)
    returns, agreements, frames = [], 0, 0
    try:
        if shifted_env.action_space.n != loaded.num_actions:
            raise EvalError(f"the checkpoint has {loaded.num_actions} actions, but scenario "
                            f"'{config['env']}' has {shifted_env.action_space.n}")
        for episode in tqdm(range(episodes), desc="shifted episodes", unit="ep", dynamic_ncols=True):
            obs, _ = shifted_env.reset(seed=seed + episode)
            twin, _ = twin_env.reset(seed=seed + episode)
            done = False
            while not done:
                pixels = torch.as_tensor(np.stack([obs["pixels"], twin["pixels"]]), device=device)
                with torch.no_grad():
                    logits, _, _ = loaded.agent.logits_value_features(pixels)
                best = logits.argmax(dim=1)
                agreements += int(best[0] == best[1])
                frames += 1
                if greedy:
                    action = int(best[0])
                else:
                    action = int(torch.multinomial(torch.softmax(logits[0:1], dim=1).cpu(), 1, generator=generator))
                obs, _, terminated, truncated, info = shifted_env.step(action)
                twin, _, twin_terminated, twin_truncated, _ = twin_env.step(action)
                if (terminated, truncated) != (twin_terminated, twin_truncated):
                    raise RuntimeError("the shifted game and its unshifted twin diverged: the engine is not "
                                       "deterministic here, so action agreement cannot be measured")
                done = terminated or truncated
            returns.append(float(np.asarray(info["episode"]["r"])))
    finally:
        shifted_env.close()
        twin_env.close()
    return returns, agreements, frames


def check_args(args: Args) -> None:
    if args.episodes < 1:
        raise EvalError(f"--episodes must be >= 1, got {args.episodes}")


def run(args: Args) -> dict:
    check_args(args)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    loaded = load_agent(args.run, device)
    _, returns = roll_out(loaded, args.episodes, args.seed, args.greedy, device)
    shifted, agreements, frames = shifted_rollout(loaded, args.episodes, args.seed, args.greedy, device)
    mean, mean_shifted = float(np.mean(returns)), float(np.mean(shifted))
    result = {
        "run": loaded.run_dir.name,
        "run_dir": str(loaded.run_dir),
        "env": loaded.config["env"],
        "method": loaded.config.get("method"),
        "seed": loaded.config.get("seed"),
        "checkpoint_step": loaded.checkpoint_step,
        "eval_seed": args.seed,
        "action_selection": "greedy" if args.greedy else "sampled",
        "episodes": args.episodes,
        "returns": returns,
        "returns_shifted": shifted,
        "mean_return": mean,
        "mean_return_shifted": mean_shifted,
        "frames_shifted": frames,
        "means": {
            "shift_return_ratio": mean_shifted / mean if mean > 0 else math.nan,
            "shift_action_agreement": agreements / frames,
        },
        "texture": {"seed": TEXTURE_SEED, "contrast": TEXTURE_CONTRAST},
        "notes": (
            "Shift: the pixels of no labelled object (vizdoom 1.3.2 label values 0 = walls, 1 = floor and ceiling) "
            "replaced by a fixed Gaussian noise texture (std 'contrast' grey levels) around the mean of the frame's "
            "background, on the engine's 160x120 frame before the resize to 84x84; objects and the weapon unchanged. "
            "shift_return_ratio: mean_return_shifted / mean_return (NaN when mean_return <= 0). "
            "shift_action_agreement: share of the shifted frames where argmax pi equals argmax pi on the unshifted "
            "twin frame (an unshifted copy of the game in lockstep)."
        ),
    }
    out_dir = Path(args.out) if args.out else loaded.run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(f"mean return {mean:.1f} unshifted, {mean_shifted:.1f} shifted over {args.episodes} episodes; "
          f"ratio {result['means']['shift_return_ratio']:.3f}; action agreement {agreements / frames:.3f} "
          f"over {frames} frames\nwrote {out_dir / RESULT_FILE}")
    return result


def main(args: Args) -> dict:
    """Evaluate; input problems exit with one line `error: ...` on stderr and status 1."""
    try:
        return run(args)
    except EvalError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main(tyro.cli(Args))
