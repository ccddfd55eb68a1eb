"""PPO with the CAMAL attention loss on ViZDoom, in the manner of CleanRL's ppo_atari.py.

    python agents/ppo_camal.py --env basic                      # CAMAL (default)
    python agents/ppo_camal.py --env basic --attn-loss none     # vanilla PPO
    tensorboard --logdir runs

The CAMAL block (marked below) computes a differentiable Grad-CAM of the policy for the action taken
in the rollout, on every minibatch, and adds lambda * mean(beta - alpha) to the PPO loss
(docs/method.md s.3-4). Acting is a plain forward pass.

Where the logic is CleanRL's, so are the names and the section comments; what a run does on
--resume, Ctrl-C / SIGTERM and bad input is gathered in the "run folder" section below.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents import run_folder
from agents.allocator import keep_freed_memory
from agents.attention import (MASK_SOURCES, attention_loss, has_target, linear_head_grad_cam, project_masks,
                              relevance_mass, training_masks)
from agents.run_folder import CHECKPOINT, CheckpointMismatch, load_checkpoint, save_checkpoint, start_point
from envs import REWARD_TRANSFORMS, check_scenario, make_env_groups, reward_scale_for
from masks import mask_outline, targets_for
from scenarios import is_config_path, short_name



@dataclass
class Args:
    env: str = "basic"
    """scenario: a stock short name (basic, defend_the_center, ...; scenarios/table.py) or the path of a .cfg
    file (a custom scenario: needs --targets and --reward-scale or another --reward-transform; README)"""
    exp_name: str = ""
    """name of the experiment in the run folder's name (default: the method, e.g. camal, vanilla)"""
    seed: int = 1
    """seed of the experiment (torch, numpy, python, environments)"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when it is available"""
    bf16: bool = False
    """run the network's layers in bfloat16 (torch.autocast; weights, losses and the attention terms stay fp32):
    ~2.5x faster updates on CPUs with AMX or AVX512-BF16 and on GPUs, much slower on CPUs without (README: Speed)"""
    env_groups: int = 2
    """step the envs in this many groups, the policy acting on one group while the engines of the others run
    (1: all envs at once, as CleanRL; README: Speed)"""
    acting_threads: int | None = 1
    """torch threads while acting on a few frames, leaving the other cores to the engines (None: torch's
    default, which the update always uses)"""
    keep_freed_memory: bool = True
    """have glibc's malloc keep the memory each minibatch frees for the next one instead of returning it to
    the system (agents/allocator.py; fewer page faults, 1.02-1.045x end to end here; README: Speed)"""
    track: bool = False
    """also log to Weights and Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "camal-vizdoom"
    """the wandb project name"""
    wandb_entity: str | None = None
    """the wandb entity (team)"""
    capture_video: bool = False
    """record videos of the first environment's episodes to videos/{run_name}"""
    runs_dir: str = "runs"
    """folder that holds the run folders"""
    save_every: int = 10
    """write a checkpoint every this many updates (and always at the end or on Ctrl-C/SIGTERM)"""
    resume: str | None = None
    """continue the run in this run folder (same step count, same tensorboard curves). Flags given with it
    must not change the run, except --total-timesteps (train longer), --cuda, --track and --wandb-*;
    other changes are refused"""
    image_every: int = 10
    """log frames with the attention map and the mask to tensorboard every this many updates (0: never)"""

    # Environment
    reward_transform: Literal["scale", "clip", "none"] = "scale"
    """learning reward: per-scenario scale (measured to learn), clip to [-1, 1] (the paper's), or none"""
    reward_scale: float | None = None
    """factor of --reward-transform scale (default: the stock scenario's; a custom .cfg has none; README)"""
    targets: str | None = None
    """override the scenario's target objects, comma-separated names or categories (e.g. Monster,Medikit); not empty"""

    # PPO (CleanRL's ppo_atari defaults)
    total_timesteps: int = 100_000
    """total environment steps (after frame skip)"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 8
    """the number of parallel environments (one engine each)"""
    num_steps: int = 128
    """the number of steps per environment per rollout"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0"""
    gamma: float = 0.99
    """the discount factor"""
    gae_lambda: float = 0.95
    """the lambda of generalised advantage estimation"""
    num_minibatches: int = 4
    """the number of minibatches per epoch"""
    update_epochs: int = 4
    """the number of epochs per update"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.1
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss"""
    ent_coef: float = 0.01
    """the entropy coefficient"""
    vf_coef: float = 0.5
    """the value function coefficient"""
    max_grad_norm: float = 0.5
    """the maximum norm for gradient clipping"""
    target_kl: float | None = None
    """stop the update early when the approximate KL exceeds this"""

    # Attention loss (docs/method.md s.4)
    attn_loss: Literal["none", "camal", "rrr", "entropy"] = "camal"
    """attention loss: none (vanilla PPO), camal, rrr (Right for the Right Reasons control) or entropy (the
    generic regulariser control: minimise the map's entropy, no mask)"""
    camal_coef: float | None = None
    """lambda: weight of the attention loss; default 0.1 for camal, 0.01 for rrr, 1 for entropy (docs/agent.md:
    choice of lambda); 0 reproduces vanilla PPO"""
    mask_source: Literal["labels", "random", "shuffled", "uniform"] = "labels"
    """masks the attention loss sees: labels (true), random (same-area blobs), shuffled (another frame's) or
    uniform (the whole frame, on frames with a target)"""

    # filled in at runtime
    method: tyro.conf.Suppress[str] = ""
    """(set at runtime) method label used by eval/aggregate.py"""
    batch_size: tyro.conf.Suppress[int] = 0
    """(set at runtime) num_envs * num_steps"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """(set at runtime) batch_size // num_minibatches"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """(set at runtime) total_timesteps // batch_size"""


# flags that may differ on --resume: how long, where and how fast a run trains, not what it learns
RESUME_CHANGEABLE = ("total_timesteps", "cuda", "track", "wandb_project_name", "wandb_entity", "env_groups",
                     "acting_threads", "keep_freed_memory")
# lambda of each attention loss when --camal-coef is not given: the largest value that did not slow
# learning on basic in its sweep (README: choice of lambda, RRR sweep)
DEFAULT_ATTENTION_COEF = {"none": 0.0, "camal": 0.1, "rrr": 0.01, "entropy": 1.0}
SEED_MAX = 2**32 - 1  # numpy's seed range is [0, 2**32 - 1]
NO_TARGET_UPDATES = 3  # an attention-loss run that sees no target in this many first updates is warned


def method_label(args: Args) -> str:
    if args.attn_loss == "none":
        return "vanilla"
    return args.attn_loss if args.mask_source == "labels" else f"{args.attn_loss}-{args.mask_source}"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


def check_args(args: Args) -> None:
    """Raise ValueError (one line: what was wrong, what is valid) for bad arguments."""
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{flag(field.name)} must be a finite number, got {value}")
    if not 0 <= args.seed <= SEED_MAX:
        raise ValueError(f"--seed must be in [0, {SEED_MAX}] (numpy's seed range), got {args.seed}")
    reward_scale_for(check_scenario(args.env), args.reward_transform, args.reward_scale)
    targets_for(args.env, args.targets)
    if args.camal_coef is not None and args.camal_coef < 0:
        raise ValueError(f"--camal-coef must be >= 0, got {args.camal_coef}")
    if args.mask_source not in MASK_SOURCES:
        raise ValueError(f"unknown --mask-source '{args.mask_source}'; valid: {', '.join(MASK_SOURCES)}")
    if args.reward_transform not in REWARD_TRANSFORMS:
        raise ValueError(f"unknown --reward-transform; valid: {', '.join(REWARD_TRANSFORMS)}")
    for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps", "save_every",
                 "learning_rate", "clip_coef", "max_grad_norm", "env_groups"):
        if getattr(args, name) <= 0:
            raise ValueError(f"{flag(name)} must be > 0, got {getattr(args, name)}")
    for name in ("image_every", "ent_coef", "vf_coef"):
        if getattr(args, name) < 0:
            raise ValueError(f"{flag(name)} must be >= 0, got {getattr(args, name)}")
    for name in ("gamma", "gae_lambda"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"{flag(name)} must be in [0, 1], got {getattr(args, name)}")
    if args.acting_threads is not None and args.acting_threads <= 0:
        raise ValueError(f"--acting-threads must be > 0 (or None: torch's default), got {args.acting_threads}")
    if args.target_kl is not None and args.target_kl <= 0:
        raise ValueError(f"--target-kl must be > 0 (or omitted), got {args.target_kl}")
    batch_size = args.num_envs * args.num_steps
    if batch_size % args.num_minibatches:
        raise ValueError(
            f"--num-minibatches {args.num_minibatches} does not divide the batch "
            f"(num_envs x num_steps = {batch_size}); choose a divisor of {batch_size}"
        )
    if args.norm_adv and batch_size // args.num_minibatches < 2:
        raise ValueError(f"a minibatch of {batch_size // args.num_minibatches} sample cannot normalise advantages "
                         f"(their std needs 2); lower --num-minibatches or pass --no-norm-adv")
    if args.total_timesteps < batch_size:
        raise ValueError(f"--total-timesteps {args.total_timesteps} is less than one batch ({batch_size} steps)")
    if args.track and importlib.util.find_spec("wandb") is None:
        raise ValueError("--track needs wandb: pip install wandb")
    check_writable_dir(Path.cwd(), "working directory (the engines write _vizdoom/ there)")
    if not args.resume:
        check_writable_dir(Path(args.runs_dir), "--runs-dir")


def check_writable_dir(path: Path, name: str) -> None:
    """ValueError unless ``path`` is a writable folder or can be created in its nearest existing parent."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name} {path}: {existing} is a file, not a folder")
    try:  # a real try: permission bits do not stop root, and some file systems take no new folders
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError:
        raise ValueError(f"{name} {path}: {existing} is not writable") from None


def set_runtime_fields(args: Args) -> None:
    if args.camal_coef is None:
        args.camal_coef = DEFAULT_ATTENTION_COEF[args.attn_loss]
    args.method = method_label(args)
    args.exp_name = args.exp_name or args.method
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """Nature CNN; ``conv`` ends in the last convolutional layer, whose output Grad-CAM explains."""

    MAP_SIZE = (7, 7)  # (h, w) of that output for 84x84 frames: the resolution of the Grad-CAM maps

    def __init__(self, num_actions: int, frames: int = 4):
        super().__init__()
        self.conv = nn.Sequential(
            layer_init(nn.Conv2d(frames, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), layer_init(nn.Linear(64 * self.MAP_SIZE[0] * self.MAP_SIZE[1], 512)), nn.ReLU()
        )
        self.actor = layer_init(nn.Linear(512, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)
        self.to(memory_format=torch.channels_last)  # oneDNN's and cuDNN's fast layout: 1.5x faster updates here

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Output A of the last conv layer (after its ReLU), for uint8 or float pixels in [0, 255]."""
        return self.conv((pixels.float() / 255.0).contiguous(memory_format=torch.channels_last))

    def get_value(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.critic(self.head(self.features(pixels))).float()  # fp32 out of a --bf16 autocast

    def get_action_and_value(self, pixels: torch.Tensor, action: torch.Tensor | None = None):
        logits, value, _ = self.logits_value_features(pixels)
        if not torch.isfinite(logits).all():  # weights that the last update blew up: no policy to act with
            raise FloatingPointError(f"policy logits = {logits[~torch.isfinite(logits)][0].item()} while acting")
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), value

    def logits_value_features(self, pixels: torch.Tensor):
        logits, value, features, _ = self.logits_value_features_hidden(pixels)
        return logits, value, features

    def logits_value_features_hidden(self, pixels: torch.Tensor):
        """Also the hidden layer ``ReLU(fc(flatten(A)))``, which the closed-form Grad-CAM needs."""
        features = self.features(pixels)
        hidden = self.head(features)
        # fp32 out of a bfloat16 autocast (--bf16): the losses, the policy and Grad-CAM are computed in fp32
        return self.actor(hidden).float(), self.critic(hidden).float(), features.float(), hidden.float()

    def grad_cam(self, features: torch.Tensor, hidden: torch.Tensor, actions: torch.Tensor, size=None) -> torch.Tensor:
        """Differentiable Grad-CAM of ``actions`` in closed form (no double backward), upsampled to ``size``
        (None: at A's 7x7, for ``camal_loss_low_res``)."""
        return linear_head_grad_cam(features, hidden, actions, self.head[1].weight, self.actor.weight, size)


# ---------------------------------------------------------------- run folder, checkpoint, resume


def create_run_dir(args: Args) -> Path:
    """A new run folder named env__exp_name__seed__time; a launch in the same second gets a suffix."""
    return run_folder.create_run_dir(args, short_name(args.env))


def resume_args(run_dir: str | Path) -> Args:
    """The saved arguments of a run, with ``resume`` set: flags given on top of them are changes."""
    return run_folder.resume_args(run_dir, Args)


def merge_resume(args: Args) -> Args:
    """The saved run's arguments with the changes that --resume allows; any other change is refused."""
    merged = run_folder.merge_resume(args, Args, RESUME_CHANGEABLE)
    set_runtime_fields(merged)
    return merged


def record_total_timesteps(args: Args, run_dir: Path, iteration: int) -> None:
    """A resumed run given another --total-timesteps keeps it in its config, for the next resume."""
    saved_total = run_folder.record_total_timesteps(args, run_dir)
    if saved_total is not None and args.anneal_lr:
        warn(f"training to {args.total_timesteps} steps instead of {saved_total}: the learning rate now anneals to 0 "
             f"over the new total ({(1 - iteration / args.num_iterations) * args.learning_rate:.3g} at the resume point)")


class Interrupted(KeyboardInterrupt):
    """A second Ctrl-C / SIGTERM: training stops at once, without writing a checkpoint."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopRequested:
    """Ctrl-C / SIGTERM set a flag; training stops at the end of the update and writes a checkpoint."""

    def __init__(self):
        self.signum: int | None = None
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal stops at once; the last checkpoint stays
            raise Interrupted(signum)
        self.signum = signum
        tqdm.write(f"signal {signum}: stopping after this update and writing a checkpoint (again to stop at once)")


class NonFiniteLoss(Exception):
    """A loss, its gradient or the policy became NaN or infinite: training stops, writing no checkpoint."""

    def __init__(self, iteration: int, terms: dict[str, torch.Tensor] | str):
        if not isinstance(terms, str):
            terms = ", ".join(f"{name} = {value.item()}" for name, value in terms.items() if not torch.isfinite(value))
        super().__init__(f"update {iteration}: non-finite {terms}")


def attention_images(pixels: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: newest grey frame, attention in red, mask outline in green."""
    frame = pixels[:, -1].float() / 255.0
    attention = maps / (maps.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-8)
    edge = torch.as_tensor(np.stack([mask_outline(m) for m in masks.cpu().numpy()]), device=frame.device).float()
    red = (0.6 * frame + 0.4 * attention).clamp(0, 1)
    green = torch.maximum(0.6 * frame, edge)
    blue = 0.6 * frame
    return torch.stack([red, green, blue], dim=1)


def main(args: Args) -> Path:
    """Train; bad arguments exit with a one-line error before anything is written.

    Exits 128 + signal after Ctrl-C / SIGTERM (with a checkpoint) and 1 on a non-finite loss."""
    checkpoint = None
    try:
        if args.resume:
            args = merge_resume(args)
        check_args(args)
        set_runtime_fields(args)
        if args.resume:
            checkpoint = load_checkpoint(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    if checkpoint is not None and checkpoint["iteration"] == args.num_iterations:
        print(f"run {args.resume} is finished ({checkpoint['global_step']} steps); nothing to do "
              f"(--total-timesteps trains it longer)")
        return Path(args.resume)
    if args.total_timesteps % args.batch_size:
        warn(f"--total-timesteps {args.total_timesteps} is not a multiple of the batch (num_envs x num_steps = "
             f"{args.batch_size}): {args.num_iterations * args.batch_size} steps will run")
    if is_config_path(args.env):  # recorded absolute, so every tool re-opens it from anywhere
        args.env = str(Path(args.env).expanduser().resolve())

    if args.resume:
        run_dir = Path(args.resume)
    else:
        try:
            run_dir = create_run_dir(args)
        except OSError as error:
            sys.exit(f"error: --runs-dir {args.runs_dir}: cannot create a run folder there ({error.strerror})")
    run_name = run_dir.name
    try:
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=vars(args), name=run_name, id=run_name, resume="allow", save_code=True)

        # TRY NOT TO MODIFY: seeding
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = args.torch_deterministic
        device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
        if args.keep_freed_memory:
            keep_freed_memory()

        # env setup
        envs = make_env_groups(args.env, args.num_envs, args.env_groups, targets=args.targets,
                               reward_transform=args.reward_transform, reward_scale=args.reward_scale,
                               video_dir=f"videos/{run_name}" if args.capture_video else None)
    except BaseException:
        if not args.resume:  # the run never started
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    try:
        signum = train(args, run_dir, envs, device, checkpoint)
    except CheckpointMismatch as error:
        sys.exit(f"error: {error}")
    except NonFiniteLoss as error:
        kept = f"{run_dir / CHECKPOINT} holds the last finite weights" if (run_dir / CHECKPOINT).exists() \
            else "no checkpoint had been written"
        sys.exit(f"error: {error}; training stopped before an optimizer step with it, so {kept}")
    except Interrupted as interrupted:
        signum = interrupted.signum
        tqdm.write(f"stopped at once by signal {signum}; {run_dir / CHECKPOINT} is the last one saved", file=sys.stderr)
    finally:
        try:
            envs.close()
        except Interrupted as interrupted:  # another signal while closing: every worker has ended all the same
            signum = interrupted.signum
    if signum is not None:  # exit status 128 + signal, the shell's convention for an interrupted program
        tqdm.write(f"interrupted; continue with --resume {run_dir}", file=sys.stderr)
        sys.exit(128 + signum)
    return run_dir


def train(args: Args, run_dir: Path, envs, device: torch.device, checkpoint: dict | None) -> int | None:
    """Train from the start or from ``checkpoint``; returns the signal that stopped it, if one did."""
    agent = Agent(envs.single_action_space.n).to(device)
    # fused: one kernel for all parameters instead of a loop over them; same maths (README: Speed)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    begin = start_point(args, checkpoint, agent, optimizer)
    if checkpoint is not None:
        record_total_timesteps(args, run_dir, begin.iteration)
    writer = SummaryWriter(str(run_dir), purge_step=begin.purge_step)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    mask_generator = torch.Generator(device=device).manual_seed(begin.mask_seed)
    precision = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=args.bf16)
    update_threads = torch.get_num_threads()

    # ALGO Logic: Storage setup
    obs_shape = envs.single_observation_space["pixels"].shape
    mask_shape = envs.single_observation_space["mask"].shape
    pixels_buf = torch.zeros((args.num_steps, args.num_envs) + obs_shape, dtype=torch.uint8, device=device)
    masks_buf = torch.zeros((args.num_steps, args.num_envs) + mask_shape, dtype=torch.bool, device=device)
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long, device=device)
    logprobs = torch.zeros((args.num_steps, args.num_envs), device=device)
    rewards = torch.zeros((args.num_steps, args.num_envs), device=device)
    dones = torch.zeros((args.num_steps, args.num_envs), device=device)
    values = torch.zeros((args.num_steps, args.num_envs), device=device)

    # TRY NOT TO MODIFY: start the game
    global_step = begin.global_step
    start_time = time.time()
    next_obs, _ = envs.reset(seed=begin.reset_seed)
    next_pixels = torch.as_tensor(next_obs["pixels"], device=device)
    next_mask = torch.as_tensor(next_obs["mask"], device=device).bool()
    next_done = torch.zeros(args.num_envs, device=device)
    recent_returns: deque[float] = deque(maxlen=20)
    target_seen = False
    stop = StopRequested()
    progress = tqdm(total=args.num_iterations * args.batch_size, initial=global_step, unit="step",
                    desc=run_dir.name, dynamic_ncols=True, mininterval=2)
    try:
        for iteration in range(begin.iteration + 1, args.num_iterations + 1):
            # Annealing the rate if instructed to do so.
            if args.anneal_lr:
                optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

            # The envs step in groups (--env-groups): the policy acts on one group while the engines of
            # the others run, and collects a group's step just before acting on it again.
            torch.set_num_threads(args.acting_threads or update_threads)
            for step in range(args.num_steps + 1):
                for group, envs_in_group in enumerate(envs.slices):
                    if step > 0:
                        # TRY NOT TO MODIFY: execute the game and log data.
                        next_obs, reward, terminations, truncations, infos = envs.step_wait(group)
                        rewards[step - 1, envs_in_group] = torch.as_tensor(reward, device=device).view(-1)
                        next_pixels[envs_in_group] = torch.as_tensor(next_obs["pixels"], device=device)
                        next_mask[envs_in_group] = torch.as_tensor(next_obs["mask"], device=device).bool()
                        next_done[envs_in_group] = torch.as_tensor(np.logical_or(terminations, truncations),
                                                                   device=device).float()
                        for episode_return, episode_length in finished_episodes(infos):
                            recent_returns.append(episode_return)
                            writer.add_scalar("charts/episodic_return", episode_return, global_step)
                            writer.add_scalar("charts/episodic_length", episode_length, global_step)
                    if step == args.num_steps:
                        continue
                    pixels_buf[step, envs_in_group] = next_pixels[envs_in_group]
                    masks_buf[step, envs_in_group] = next_mask[envs_in_group]
                    dones[step, envs_in_group] = next_done[envs_in_group]
                    with torch.no_grad(), precision():  # acting: a plain forward pass, no attention
                        action, logprob, _, value = agent.get_action_and_value(next_pixels[envs_in_group])
                    values[step, envs_in_group] = value.flatten()
                    actions[step, envs_in_group] = action
                    logprobs[step, envs_in_group] = logprob
                    envs.step_async(group, action.cpu().numpy())
                if step < args.num_steps:
                    global_step += args.num_envs
            torch.set_num_threads(update_threads)
            progress.update(args.batch_size)

            # bootstrap value if not done
            with torch.no_grad(), precision():  # autocast touches only the network's layers, not the GAE below
                next_value = agent.get_value(next_pixels).reshape(1, -1)
                advantages = torch.zeros_like(rewards)
                lastgaelam = 0
                for t in reversed(range(args.num_steps)):
                    if t == args.num_steps - 1:
                        nextnonterminal = 1.0 - next_done
                        nextvalues = next_value
                    else:
                        nextnonterminal = 1.0 - dones[t + 1]
                        nextvalues = values[t + 1]
                    delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                    advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                returns = advantages + values

            # flatten the batch
            b_pixels = pixels_buf.reshape((-1,) + obs_shape)
            b_masks = masks_buf.reshape((-1,) + mask_shape)
            b_logprobs = logprobs.reshape(-1)
            b_actions = actions.reshape(-1)
            b_advantages = advantages.reshape(-1)
            b_returns = returns.reshape(-1)
            b_values = values.reshape(-1)
            if not target_seen:
                target_seen = warn_if_no_target(args, b_masks, iteration - begin.iteration,
                                                args.num_iterations - begin.iteration)

            # CAMAL: the true masks as its loss sees them, once per rollout (they stay the same over the epochs)
            b_projected = (project_masks(training_masks(b_masks, args.mask_source), Agent.MAP_SIZE)
                           if args.attn_loss == "camal" and args.mask_source in ("labels", "uniform") else None)

            # Optimizing the policy and value network
            b_inds = np.arange(args.batch_size)
            clipfracs, attn_losses = [], []
            for epoch in range(args.update_epochs):
                np.random.shuffle(b_inds)
                for start in range(0, args.batch_size, args.minibatch_size):
                    end = start + args.minibatch_size
                    mb_inds = torch.as_tensor(b_inds[start:end], device=device)
                    mb_pixels = b_pixels[mb_inds].float()
                    mb_unit_pixels = None
                    if args.attn_loss == "rrr":  # RRR differentiates w.r.t. pixels scaled to [0, 1]
                        mb_unit_pixels = (mb_pixels / 255.0).requires_grad_(True)
                        mb_pixels = mb_unit_pixels * 255.0
                    with precision():
                        logits, newvalue, features, hidden = agent.logits_value_features_hidden(mb_pixels)
                    dist = Categorical(logits=logits, validate_args=False)  # NaN logits reach the loss check
                    newlogprob = dist.log_prob(b_actions[mb_inds])
                    entropy = dist.entropy()
                    logratio = newlogprob - b_logprobs[mb_inds]
                    ratio = logratio.exp()

                    with torch.no_grad():
                        # calculate approx_kl http://joschu.net/blog/kl-approx.html
                        old_approx_kl = (-logratio).mean()
                        approx_kl = ((ratio - 1) - logratio).mean()
                        clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())  # no .item(): no sync

                    mb_advantages = b_advantages[mb_inds]
                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                    # Policy loss
                    pg_loss1 = -mb_advantages * ratio
                    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                    # Value loss
                    newvalue = newvalue.view(-1)
                    if args.clip_vloss:
                        v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                        v_clipped = b_values[mb_inds] + torch.clamp(
                            newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef
                        )
                        v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                        v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                    else:
                        v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                    entropy_loss = entropy.mean()
                    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
                    terms = {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy_loss}

                    # ---------------- CAMAL: attention loss on this minibatch ----------------
                    if args.attn_loss != "none":
                        if b_projected is not None:
                            mb_masks = b_projected[mb_inds]
                        else:  # RRR's pixel masks, or a control's masks drawn anew for every minibatch
                            mb_masks = training_masks(b_masks[mb_inds], args.mask_source, mask_generator)
                        cams = agent.grad_cam(features, hidden, b_actions[mb_inds]) if args.attn_loss == "camal" else None
                        maps = (agent.grad_cam(features, hidden, b_actions[mb_inds], mask_shape)
                                if args.attn_loss == "entropy" else None)
                        attn_loss = attention_loss(args.attn_loss, mb_masks, cams=cams, inputs=mb_unit_pixels,
                                                   log_probs=newlogprob, maps=maps)
                        loss = loss + args.camal_coef * attn_loss
                        attn_losses.append(attn_loss.detach())
                        terms[f"{args.attn_loss}_loss"] = attn_loss
                    # ---------------------------------------------------------------------------

                    if not torch.isfinite(loss):
                        raise NonFiniteLoss(iteration, {**terms, "loss": loss})
                    optimizer.zero_grad()
                    loss.backward()
                    grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    if not torch.isfinite(grad_norm):
                        raise NonFiniteLoss(iteration, {"gradient norm of the loss": grad_norm})
                    optimizer.step()

                if args.target_kl is not None and approx_kl > args.target_kl:
                    break

            y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

            # TRY NOT TO MODIFY: record rewards for plotting purposes
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
            writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
            writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
            writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
            writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
            writer.add_scalar("losses/clipfrac", torch.stack(clipfracs).mean().item(), global_step)
            writer.add_scalar("losses/explained_variance", explained_var, global_step)
            if attn_losses:
                writer.add_scalar(f"losses/{args.attn_loss}_loss", torch.stack(attn_losses).mean().item(), global_step)
            log_attention(writer, agent, b_pixels, b_masks, b_actions, global_step, args, iteration)
            sps = int((global_step - begin.global_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            recent = f"{np.mean(recent_returns):.1f}" if recent_returns else "n/a"
            progress.set_postfix(sps=sps, ret=recent)

            if iteration % args.save_every == 0 or iteration == args.num_iterations or stop.signum is not None:
                save_checkpoint(run_dir / CHECKPOINT, agent, optimizer, iteration, global_step)
            if stop.signum is not None:
                break
    except FloatingPointError as error:
        raise NonFiniteLoss(iteration, str(error)) from None
    finally:
        progress.close()
        writer.close()
    tqdm.write(f"run folder: {run_dir}")
    return stop.signum


def warn_if_no_target(args: Args, b_masks: torch.Tensor, updates_done: int, updates_planned: int) -> bool:
    """Whether this rollout saw a target; warns once when an attention-loss run saw none in its first updates."""
    seen = bool(has_target(b_masks).any())
    if not seen and args.attn_loss != "none" and updates_done == min(NO_TARGET_UPDATES, updates_planned):
        warn(f"no frame of the first {updates_done} updates had a target in its mask (targets: "
             f"{', '.join(targets_for(args.env, args.targets))}): the {args.attn_loss} loss is 0 and the run "
             f"trains as vanilla PPO; check --targets")
    return seen


def finished_episodes(infos: dict):
    """(true return, length) of each episode that ended on this step (same-step autoreset)."""
    final = infos.get("final_info", {})
    if "episode" not in final:
        return []
    ended = final["_episode"]
    return [(float(r), int(l)) for r, l, e in zip(final["episode"]["r"], final["episode"]["l"], ended) if e]


def log_attention(writer, agent, b_pixels, b_masks, b_actions, global_step, args, iteration, sample_size=256):
    """Relevance mass, mask fraction and zero-map fraction on a sample of the rollout, for every method alike."""
    generator = torch.Generator().manual_seed(iteration)
    idx = torch.randperm(b_pixels.shape[0], generator=generator)[:sample_size].to(b_pixels.device)
    pixels, masks, actions = b_pixels[idx], b_masks[idx], b_actions[idx]
    with torch.no_grad():  # the closed-form map: a forward pass, no backward
        _, _, features, hidden = agent.logits_value_features_hidden(pixels)
        maps = agent.grad_cam(features, hidden, actions, masks.shape[-2:])
    with_target = has_target(masks)
    writer.add_scalar("attention/mask_fraction", with_target.float().mean().item(), global_step)
    # share of all-zero maps: the CAMAL loss can also be lowered by switching attention off
    writer.add_scalar("attention/zero_map_fraction", (maps.flatten(1).amax(dim=1) == 0).float().mean().item(), global_step)
    if with_target.any():
        mass = relevance_mass(maps[with_target], masks[with_target])
        if not torch.isnan(mass).all():
            writer.add_scalar("attention/relevance_mass", torch.nanmean(mass).item(), global_step)
    if args.image_every and iteration % args.image_every == 0:
        shown = torch.nonzero(with_target).flatten()[:8] if with_target.any() else torch.arange(min(8, len(idx)))
        writer.add_images("attention/frames", attention_images(pixels[shown], maps[shown], masks[shown]), global_step)


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line; with --resume, flags not given take the run's saved values (so a given one is a change)."""
    args = tyro.cli(Args, args=argv)
    if args.resume:
        try:
            saved = resume_args(args.resume)
        except ValueError as error:
            sys.exit(f"error: {error}")
        args = tyro.cli(Args, args=argv, default=saved)
    return args


if __name__ == "__main__":
    main(parse_args())
