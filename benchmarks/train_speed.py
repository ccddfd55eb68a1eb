"""Training speed: CAMAL vs vanilla PPO (and RRR) and a peer PPO (SB3), measured in one run.

    pip install -r benchmarks/requirements.txt     # stable-baselines3, for the peer
    python benchmarks/train_speed.py --env basic

1. the machine: peak fp32 GFLOP/s of a large matrix product (with the torch threads of --threads);
2. update cost: seconds per PPO minibatch update (forward, loss, backward, Adam step) on a fixed
   batch of real frames, for each attention loss, and the achieved GFLOP/s (the Nature CNN's
   forward + backward FLOPs, counted from its layers) against the peak. `camal` is the trainer's
   (closed-form Grad-CAM, loss at the map's 7x7, `camal_loss_low_res` on masks projected once per
   rollout); `camal-masks-per-mb` projects them in every minibatch (the trainer's before); `camal-upsampled` the
   closed-form map upsampled to 84x84 with `camal_loss`; `camal-autograd` that loss on autograd's
   double-backward map (`grad_cam(create_graph=True)`), the trainer's before the closed form;
   `vanilla-unfused` Adam looping over the parameters (the trainer's before `fused=True`); `vanilla-nchw` the
   network in PyTorch's default memory layout (the trainer's before channels_last);
   `*-bf16` the trainer's --bf16 (layers in bfloat16 under torch.autocast), its GFLOP/s against a bf16 matmul;
3. rollout only: steps/s of acting as the trainer does (the agent's forward pass + stepping 8 envs),
   with the envs in 1 or 2 groups (--env-groups: acting on one group overlaps the other's engines)
   and 1 or the default torch threads while acting (--acting-threads), against the raw engine
   (`DoomGame.make_action`, 8 processes, same cores; benchmarks/env_throughput.py);
4. end to end: SPS of `agents/ppo_camal.py` runs and of `benchmarks/sb3_ppo.py` (SB3 CnnPolicy, same
   env, network and flags) of a few iterations each, the setups interleaved in every repeat, in
   reverse order every other repeat, so that drift on a shared machine hits them alike (ours: the
   run's last `charts/SPS` scalar).
Every timing section interleaves its setups repeat by repeat and reports medians.
"""

from __future__ import annotations

import statistics
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

from agents.attention import camal_loss, camal_loss_low_res, grad_cam, project_masks, rrr_loss
from agents.network import Agent
from env_throughput import raw_steps_per_second  # the sibling script (benchmarks/ is on sys.path)
from envs import check_scenario, make_env, make_env_groups
from envs.doom import FRAME_SIZE, STACK_SIZE

ROOT = Path(__file__).resolve().parents[1]
METHOD_FLAGS = {"vanilla": ["--attn-loss", "none"], "camal": ["--attn-loss", "camal"], "rrr": ["--attn-loss", "rrr"],
                "vanilla-bf16": ["--attn-loss", "none", "--bf16"], "camal-bf16": ["--attn-loss", "camal", "--bf16"],
                "vanilla-unpiped": ["--attn-loss", "none", "--env-groups", "1", "--acting-threads", "None"],
                "camal-zero": ["--attn-loss", "camal", "--camal-coef", "0"],
                "vanilla-default-malloc": ["--attn-loss", "none", "--no-keep-freed-memory"]}
"""-bf16: with --bf16; -unpiped: acting on all envs at once with torch's default threads (the trainer before
--env-groups and --acting-threads); camal-zero: CAMAL's whole computation with lambda 0, which plays exactly
vanilla's episodes, so its ratio to vanilla is CAMAL's compute alone (a run that learns differently also
plays different episodes, e.g. shorter ones with more engine resets, at another speed); -default-malloc: glibc's
malloc returning freed memory to the system (the trainer before --keep-freed-memory)"""
PEER = "sb3"
FRAME_SHAPE = (STACK_SIZE, FRAME_SIZE, FRAME_SIZE)
UPDATE_VARIANTS = ("vanilla", "camal", "camal-masks-per-mb", "vanilla-unfused", "vanilla-nchw", "vanilla-bf16",
                   "camal-bf16", "camal-upsampled", "camal-autograd", "rrr")
"""camal: its masks projected once per rollout (project_masks), outside the timed update, as the trainer
does; camal-masks-per-mb: projected in every minibatch (the trainer's before); -unfused: Adam's loop over the
parameters (the trainer's before fused=True); -nchw: the network in PyTorch's default layout (the trainer's
before channels_last); -bf16: with --bf16"""


@dataclass
class Args:
    env: str = "basic"
    """scenario"""
    methods: list[str] = field(default_factory=lambda: ["vanilla", "camal", "rrr", PEER])
    """setups to compare end to end: vanilla, camal, rrr and the variants of METHOD_FLAGS (agents/ppo_camal.py),
    and sb3 (the peer)"""
    minibatch_size: int = 256
    """minibatch of the update benchmark (CleanRL default with 8 envs x 128 steps / 4)"""
    updates: int = 20
    """timed minibatch updates per update variant (split over the repeats)"""
    iterations: int = 4
    """PPO iterations (--num-envs envs x 128 steps each) per end-to-end run"""
    num_envs: int = 8
    """envs of each end-to-end run, ours and the peer's (the trainers' --num-envs; e.g. 16-64 on a GPU machine)"""
    repeats: int = 2
    """rounds of every timing section; in each round every setup runs once, in turn (use an even number)"""
    rollout_steps: int = 512
    """vector steps (x 8 envs) of the rollout-only measurement (0: skip it)"""
    cuda: bool = False
    """run on the GPU if available"""
    threads: int | None = None
    """torch threads of this process (update and rollout sections; None: torch's default, as the trainer)"""
    end_to_end: bool = True
    """run the end-to-end section (--no-end-to-end: the machine, update and rollout sections only)"""


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


def peak_gflops(size: int = 2048, products: int = 8, dtype: torch.dtype = torch.float32,
                device: torch.device = torch.device("cpu")) -> float:
    """GFLOP/s of ``products`` (size x size) @ (size x size) matrix products in ``dtype``, after one warm-up."""
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(products):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * products / (time.perf_counter() - start) / 1e9


def update_flops(agent: Agent, batch: int) -> float:
    """FLOPs of one forward + backward pass of ``agent`` on ``batch`` frames (convolutions and linear layers).

    Forward: 2 FLOPs per multiply-add. Backward: the same again for the weight gradients and again for
    the input gradients, except the first layer's (the pixels need none). Biases, activations and the
    optimizer are left out (<1%).
    """
    macs: list[int] = []

    def count(module, inputs, output):
        # one multiply-add per weight of an output's receptive field (in_channels x kernel, or in_features)
        macs.append(output[0].numel() * module.weight[0].numel())

    layers = [m for m in agent.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            agent.logits_value_features(torch.zeros((1,) + FRAME_SHAPE, device=next(agent.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    first_layer = macs[0]
    return batch * 2 * (3 * sum(macs) - first_layer)


class NchwAgent(Agent):
    """The trainer's network in PyTorch's default (NCHW) memory layout, as it was before channels_last."""

    def __init__(self, num_actions: int):
        super().__init__(num_actions)
        self.to(memory_format=torch.contiguous_format)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.conv(pixels.float() / 255.0)


def update_step(variant: str, pixels: torch.Tensor, masks: torch.Tensor, num_actions: int, device: torch.device):
    """One PPO-like minibatch update (forward, loss with the variant's attention term, backward, clip, Adam)."""
    torch.manual_seed(0)
    bf16 = variant.endswith("-bf16")
    agent = (NchwAgent if variant.endswith("-nchw") else Agent)(num_actions).to(device)
    fused = not variant.endswith("-unfused")
    variant = variant.removesuffix("-bf16").removesuffix("-nchw").removesuffix("-unfused")
    optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5, fused=fused)
    pixels, masks = pixels.to(device), masks.to(device)
    actions = torch.randint(0, num_actions, (len(pixels),), device=device)
    advantages = torch.randn(len(pixels), device=device)
    size = tuple(masks.shape[-2:])
    projected = project_masks(masks, Agent.MAP_SIZE)

    def update():
        x = pixels.float()
        if variant == "rrr":
            unit = (x / 255.0).requires_grad_(True)
            x = unit * 255.0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, value, features, hidden = agent.logits_value_features_hidden(x)
        dist = Categorical(logits=logits)
        logprob = dist.log_prob(actions)
        loss = -(advantages * logprob.exp()).mean() - 0.01 * dist.entropy().mean() + 0.5 * (value.view(-1) ** 2).mean()
        if variant == "camal":
            loss = loss + camal_loss_low_res(agent.grad_cam(features, hidden, actions), projected)
        elif variant == "camal-masks-per-mb":
            loss = loss + camal_loss_low_res(agent.grad_cam(features, hidden, actions), masks)
        elif variant == "camal-upsampled":
            loss = loss + camal_loss(agent.grad_cam(features, hidden, actions, size), masks)
        elif variant == "camal-autograd":
            loss = loss + camal_loss(grad_cam(features, logits, actions, size, create_graph=True), masks)
        elif variant == "rrr":
            loss = loss + rrr_loss(unit, logprob, masks)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return update


def time_round(steps: dict, updates: int) -> dict[str, float]:
    """Seconds per update of each variant's update step, ``updates`` of each, the variants in turn."""
    seconds = {}
    for variant, update in steps.items():
        start = time.perf_counter()
        for _ in range(updates):
            update()
        seconds[variant] = (time.perf_counter() - start) / updates
    return seconds


ROLLOUT_SETUPS = {"1 group, default threads": (1, None), "1 group, 1 thread": (1, 1), "2 groups, 1 thread": (2, 1)}
"""(--env-groups, --acting-threads) of the trainer: the first is its acting before pipelining, the last its default"""


def rollout_sps(envs, agent: Agent, vector_steps: int, threads: int | None, device: torch.device) -> float:
    """Acting as the trainer does (agents/ppo_camal.py): the policy acts on each group of envs in turn and
    collects a group's step just before acting on it again."""
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        obs, _ = envs.reset(seed=0)
        pixels = torch.as_tensor(obs["pixels"], device=device)
        start = time.perf_counter()
        for step in range(vector_steps + 1):
            for group, envs_in_group in enumerate(envs.slices):
                if step > 0:
                    obs, *_ = envs.step_wait(group)
                    pixels[envs_in_group] = torch.as_tensor(obs["pixels"], device=device)
                if step < vector_steps:
                    with torch.no_grad():
                        action, _, _, _ = agent.get_action_and_value(pixels[envs_in_group])
                    envs.step_async(group, action.cpu().numpy())
        return envs.num_envs * vector_steps / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(default_threads)


def rollout_table(scenario: str, num_actions: int, vector_steps: int, repeats: int, device: torch.device,
                  num_envs: int = 8) -> dict[str, float]:
    """Median steps/s of each of ROLLOUT_SETUPS, interleaved round by round (engine start-up not timed)."""
    agent = Agent(num_actions).to(device)
    setups = {name: make_env_groups(scenario, num_envs, groups) for name, (groups, _) in ROLLOUT_SETUPS.items()}
    try:
        for name, envs in setups.items():  # warm-up
            rollout_sps(envs, agent, 20, ROLLOUT_SETUPS[name][1], device)
        rates: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(repeats):
            for name, envs in setups.items():
                rates[name].append(rollout_sps(envs, agent, vector_steps, ROLLOUT_SETUPS[name][1], device))
        return {name: statistics.median(values) for name, values in rates.items()}
    finally:
        for envs in setups.values():
            envs.close()


def end_to_end_sps(method: str, args: Args, runs_dir: Path) -> float:
    """SPS of one short training run in a fresh process: ours (agents/ppo_camal.py) or the peer's."""
    steps = str(args.iterations * args.num_envs * 128)
    if method == PEER:
        cmd = [sys.executable, str(ROOT / "benchmarks/sb3_ppo.py"), "--env", args.env, "--total-timesteps", steps,
               "--num-envs", str(args.num_envs)]
        done = subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        return float(done.stdout.split()[-1])
    cmd = [sys.executable, str(ROOT / "agents/ppo_camal.py"), "--env", args.env, "--runs-dir", str(runs_dir),
           "--exp-name", f"bench-{method}-{time.time_ns()}", "--total-timesteps", steps,
           "--num-envs", str(args.num_envs), "--save-every", "1000", "--image-every", "0", *METHOD_FLAGS[method]]
    if not args.cuda:
        cmd.append("--no-cuda")
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = max(runs_dir.glob(f"*bench-{method}-*"), key=lambda p: p.stat().st_mtime)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars("charts/SPS")[-1].value


def check_args(args: Args) -> None:
    """Exit with a one-line error for a bad argument, before anything runs."""
    valid = [*METHOD_FLAGS, PEER]
    unknown = [m for m in args.methods if m not in valid]
    if unknown:
        sys.exit(f"error: unknown method {unknown[0]!r}; valid: {', '.join(valid)}")
    if not args.methods:
        sys.exit(f"error: --methods is empty; valid: {', '.join(valid)}")
    try:
        check_scenario(args.env)
    except ValueError as error:
        sys.exit(f"error: {error}")
    for name in ("minibatch_size", "updates", "iterations", "repeats", "num_envs"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.threads is not None and args.threads <= 0:
        sys.exit(f"error: --threads must be > 0 (or omitted for torch's default), got {args.threads}")
    if args.rollout_steps < 0:
        sys.exit(f"error: --rollout-steps must be >= 0, got {args.rollout_steps}")
    if PEER in args.methods:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            sys.exit("error: method sb3 needs stable-baselines3: pip install -r benchmarks/requirements.txt")


def main(args: Args) -> None:
    check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    print(f"device: {device}, torch threads: {torch.get_num_threads()}", flush=True)
    pixels, masks, num_actions = real_frames(args.env, args.minibatch_size)

    steps = {v: update_step(v, pixels, masks, num_actions, device) for v in UPDATE_VARIANTS}
    time_round(steps, 2)  # warm-up
    per_round = max(1, args.updates // args.repeats)
    peaks, bf16_peaks, update_seconds = [], [], {v: [] for v in UPDATE_VARIANTS}
    size = 2048 if device.type == "cpu" else 8192  # a GPU needs a larger product to reach its peak
    for _ in range(args.repeats):  # the peak and the updates in turn, so that load hits both alike
        peaks.append(peak_gflops(size, device=device))
        bf16_peaks.append(peak_gflops(size, dtype=torch.bfloat16, device=device))
        for variant, seconds in time_round(steps, per_round).items():
            update_seconds[variant].append(seconds)
    flops = update_flops(Agent(num_actions).to(device), args.minibatch_size)
    peak, bf16_peak = max(peaks), max(bf16_peaks)  # measured on every device now; --repeats >= 1
    print(f"\nminibatch update ({args.minibatch_size} frames of {args.env}), median of {args.repeats} rounds of "
          f"{per_round}; forward + backward of the Nature CNN: {flops / 1e9:.2f} GFLOP; "
          f"peak ({size}^3 matmul on {device.type}, best of {len(peaks)}): fp32 {peak:.1f}, bf16 {bf16_peak:.1f} "
          "GFLOP/s")
    print(f"  {'variant':18s} {'ms':>8s} {'x vanilla':>10s} {'GFLOP/s':>8s} {'of peak':>8s}")
    base_update = statistics.median(update_seconds["vanilla"])
    for variant, values in update_seconds.items():
        seconds = statistics.median(values)
        # camal's closed-form map adds <1% to the count; the other variants' extra work is not counted
        gflops = flops / seconds / 1e9
        rate = ""
        if variant in ("vanilla", "camal", "vanilla-unfused", "vanilla-nchw", "vanilla-bf16", "camal-bf16"):
            rate = f"{gflops:8.1f} {gflops / (bf16_peak if variant.endswith('bf16') else peak):8.0%}"
        print(f"  {variant:18s} {seconds * 1000:8.1f} {seconds / base_update:10.2f} {rate}")

    if args.rollout_steps:
        acting = rollout_table(args.env, num_actions, args.rollout_steps, args.repeats, device)
        raw = raw_steps_per_second(args.env, 8, args.rollout_steps, seed=0, read_state=True)
        print(f"\nrollout only (8 envs, --env-groups / --acting-threads; median of {args.repeats} interleaved "
              f"rounds): raw engine (8 processes, make_action + get_state) {raw:.0f} steps/s", flush=True)
        first = next(iter(acting.values()))
        for name, rate in acting.items():
            print(f"  {name:26s} {rate:6.0f} steps/s  x{rate / first:.2f}  of raw {rate / raw:.2f}")

    if not args.end_to_end:
        return
    sps: dict[str, list[float]] = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            # A B C, then C B A: a load that drifts steadily through the run favours no setup
            for method in args.methods if repeat % 2 == 0 else args.methods[::-1]:
                sps[method].append(end_to_end_sps(method, args, Path(tmp)))
                print(f"  run {repeat + 1}/{args.repeats} {method}: {sps[method][-1]:.0f} SPS", flush=True)
    medians = {m: statistics.median(v) for m, v in sps.items()}
    print(f"\nend to end ({args.iterations} iterations of {args.num_envs} envs x 128 steps, {args.repeats} interleaved "
          f"runs each, median SPS):")
    header = f"  {'setup':12s} {'SPS':>8s}  {'runs':24s}"
    ratios = [m for m in ("vanilla", PEER) if m in medians]
    print(header + "".join(f" {'/ ' + m:>10s}" for m in ratios))
    for method, values in sps.items():
        runs = " ".join(f"{v:.0f}" for v in values)
        line = f"  {method:12s} {medians[method]:8.0f}  {runs:24s}"
        print(line + "".join(f" {medians[method] / medians[m]:10.2f}" for m in ratios))


if __name__ == "__main__":
    main(tyro.cli(Args))
