"""Training speed: CAMAL vs vanilla PPO (and RRR), measured in one run on the same machine.

    python benchmarks/train_speed.py --env basic --iterations 4

1. update cost: seconds per PPO minibatch update (forward, loss, backward, Adam step) on a fixed
   batch of real frames, for each attention loss;
2. rollout only: steps/s of acting (the agent's forward pass + the 8-env vector env step), against
   the raw engine (`DoomGame.make_action`, 8 processes, same cores; benchmarks/env_throughput.py);
3. end to end: SPS of `agents/ppo_camal.py` runs of a few iterations each, methods interleaved so
   that drift on the machine hits them alike (SPS from the run's last `charts/SPS` scalar).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions.categorical import Categorical

from agents.attention import camal_loss, grad_cam, rrr_loss
from agents.ppo_camal import Agent
from env_throughput import raw_steps_per_second  # the sibling script (benchmarks/ is on sys.path)
from envs import make_env, make_vector_env

ROOT = Path(__file__).resolve().parents[1]
METHOD_FLAGS = {"vanilla": ["--attn-loss", "none"], "camal": ["--attn-loss", "camal"], "rrr": ["--attn-loss", "rrr"]}


@dataclass
class Args:
    env: str = "basic"
    """scenario"""
    methods: list[str] = field(default_factory=lambda: ["vanilla", "camal", "rrr"])
    """attention losses to compare (vanilla, camal, rrr)"""
    minibatch_size: int = 256
    """minibatch of the update benchmark (CleanRL default with 8 envs x 128 steps / 4)"""
    updates: int = 20
    """timed minibatch updates per method"""
    iterations: int = 4
    """PPO iterations (8 envs x 128 steps each) per end-to-end run"""
    repeats: int = 2
    """end-to-end runs per method, interleaved"""
    rollout_steps: int = 512
    """vector steps (x 8 envs) of the rollout-only measurement"""
    cuda: bool = False
    """run on the GPU if available"""


def real_frames(scenario: str, count: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``count`` frames and masks of random play, and the scenario's number of actions."""
    env = make_env(scenario)
    pixels, masks = [], []
    try:
        obs, _ = env.reset(seed=0)
        while len(pixels) < count:
            pixels.append(obs["pixels"])
            masks.append(obs["mask"])
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()
    finally:
        env.close()
    return torch.as_tensor(np.stack(pixels)), torch.as_tensor(np.stack(masks)).bool(), int(env.action_space.n)


def time_updates(method: str, pixels: torch.Tensor, masks: torch.Tensor, num_actions: int, updates: int,
                 device: torch.device) -> float:
    torch.manual_seed(0)
    agent = Agent(num_actions).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
    pixels, masks = pixels.to(device), masks.to(device)
    actions = torch.randint(0, num_actions, (len(pixels),), device=device)
    advantages = torch.randn(len(pixels), device=device)

    def update():
        x = pixels.float()
        if method == "rrr":
            unit = (x / 255.0).requires_grad_(True)
            x = unit * 255.0
        logits, value, features = agent.logits_value_features(x)
        dist = Categorical(logits=logits)
        logprob = dist.log_prob(actions)
        loss = -(advantages * logprob.exp()).mean() - 0.01 * dist.entropy().mean() + 0.5 * (value.view(-1) ** 2).mean()
        if method == "camal":
            loss = loss + camal_loss(grad_cam(features, logits, actions, masks.shape[-2:]), masks)
        elif method == "rrr":
            loss = loss + rrr_loss(unit, logprob, masks)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
        optimizer.step()

    for _ in range(3):
        update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(updates):
        update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / updates


def rollout_sps(scenario: str, num_actions: int, vector_steps: int, device: torch.device, num_envs: int = 8) -> float:
    """Acting as in training: uint8 frames to the agent, sample an action, step the vector env."""
    agent = Agent(num_actions).to(device)
    envs = make_vector_env(scenario, num_envs)
    try:
        obs, _ = envs.reset(seed=0)
        start = time.perf_counter()
        for _ in range(vector_steps):
            with torch.no_grad():
                action, _, _, _ = agent.get_action_and_value(torch.as_tensor(obs["pixels"], device=device))
            obs, *_ = envs.step(action.cpu().numpy())
        return num_envs * vector_steps / (time.perf_counter() - start)
    finally:
        envs.close()


def end_to_end_sps(method: str, args: Args, runs_dir: Path) -> float:
    cmd = [sys.executable, str(ROOT / "agents/ppo_camal.py"), "--env", args.env, "--runs-dir", str(runs_dir),
           "--exp-name", f"bench-{method}-{time.time_ns()}", "--total-timesteps", str(args.iterations * 1024),
           "--save-every", "1000", "--image-every", "0", *METHOD_FLAGS[method]]
    if not args.cuda:
        cmd.append("--no-cuda")
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = max(runs_dir.glob(f"*bench-{method}-*"), key=lambda p: p.stat().st_mtime)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars("charts/SPS")[-1].value


def main(args: Args) -> None:
    unknown = [m for m in args.methods if m not in METHOD_FLAGS]
    if unknown:
        sys.exit(f"error: unknown method {unknown[0]!r}; valid: {', '.join(METHOD_FLAGS)}")
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    print(f"device: {device}, torch threads: {torch.get_num_threads()}", flush=True)
    pixels, masks, num_actions = real_frames(args.env, args.minibatch_size)
    update_seconds = {m: time_updates(m, pixels, masks, num_actions, args.updates, device) for m in args.methods}
    print(f"\nminibatch update ({args.minibatch_size} frames of {args.env}), mean of {args.updates}:")
    for method, seconds in update_seconds.items():
        print(f"  {method:8s} {seconds * 1000:8.1f} ms   x{seconds / update_seconds[args.methods[0]]:.2f} of {args.methods[0]}")

    acting = rollout_sps(args.env, num_actions, args.rollout_steps, device)
    raw = raw_steps_per_second(args.env, 8, args.rollout_steps, seed=0, read_state=True)
    print(f"\nrollout only (8 envs): {acting:.0f} steps/s; raw engine (8 processes, make_action + get_state): "
          f"{raw:.0f} steps/s; ratio {acting / raw:.2f}", flush=True)

    sps: dict[str, list[float]] = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for method in args.methods:
                sps[method].append(end_to_end_sps(method, args, Path(tmp)))
                print(f"  run {repeat + 1}/{args.repeats} {method}: {sps[method][-1]:.0f} SPS", flush=True)
    base = np.mean(sps[args.methods[0]])
    print(f"\nend to end ({args.iterations} iterations of 8 envs x 128 steps, {args.repeats} runs each):")
    for method, values in sps.items():
        print(f"  {method:8s} {np.mean(values):8.0f} SPS   ratio to {args.methods[0]}: {np.mean(values) / base:.2f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
