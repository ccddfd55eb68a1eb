"""PPO with the CAMAL attention loss on ViZDoom, in the manner of CleanRL's ppo_atari.py.

    python agents/ppo_camal.py --env basic                      # CAMAL (default)
    python agents/ppo_camal.py --env basic --attn-loss none     # vanilla PPO
    tensorboard --logdir runs

The CAMAL block (marked below) computes a differentiable Grad-CAM of the policy for the action taken
in the rollout, on every minibatch, and adds lambda * mean(beta - alpha) to the PPO loss
(../shared/CAMAL.md sections 3-4). Acting is a plain forward pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sys
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

from agents.attention import (MASK_SOURCES, camal_loss_low_res, grad_cam, has_target, linear_head_grad_cam,
                              relevance_mass, rrr_loss, training_masks)
from envs import REWARD_TRANSFORMS, check_scenario, make_vector_env
from masks import mask_outline, targets_for

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"


@dataclass
class Args:
    env: str = "basic"
    """scenario short name (basic, defend_the_center, health_gathering, ...; see envs.SCENARIOS)"""
    exp_name: str = ""
    """name of the experiment in the run folder's name (default: the method, e.g. camal, vanilla)"""
    seed: int = 1
    """seed of the experiment (torch, numpy, python, environments)"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when it is available"""
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
    """continue the run in this run folder (same step count, same tensorboard run); other flags are ignored"""
    image_every: int = 10
    """log frames with the attention map and the mask to tensorboard every this many updates (0: never)"""

    # Environment
    reward_transform: Literal["scale", "clip", "none"] = "scale"
    """learning reward: per-scenario scale (measured to learn), clip to [-1, 1] (the paper's), or none"""
    targets: str | None = None
    """override the scenario's target objects, comma-separated names or categories (e.g. Monster,Medikit)"""
    engines_per_worker: int | None = None
    """engines stepped by each env worker process (None: about one worker per CPU core; README, Speed)"""

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

    # Attention loss (CAMAL.md section 4)
    attn_loss: Literal["none", "camal", "rrr"] = "camal"
    """attention loss: none (vanilla PPO), camal, or rrr (Right for the Right Reasons control)"""
    camal_coef: float = 0.1
    """lambda: weight of the attention loss (camal or rrr); 0 reproduces vanilla PPO (0.1: see README)"""
    mask_source: Literal["labels", "random", "shuffled"] = "labels"
    """masks the attention loss sees: labels (true), random (same-area blobs) or shuffled (another frame's)"""

    # filled in at runtime
    method: tyro.conf.Suppress[str] = ""
    """(set at runtime) method label used by eval/aggregate.py"""
    batch_size: tyro.conf.Suppress[int] = 0
    """(set at runtime) num_envs * num_steps"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """(set at runtime) batch_size // num_minibatches"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """(set at runtime) total_timesteps // batch_size"""


def method_label(args: Args) -> str:
    if args.attn_loss == "none":
        return "vanilla"
    return args.attn_loss if args.mask_source == "labels" else f"{args.attn_loss}-{args.mask_source}"


def check_args(args: Args) -> None:
    """Raise ValueError (one line: what was wrong, what is valid) for bad arguments."""
    check_scenario(args.env)
    if args.targets is not None:
        targets_for(args.env, args.targets)
    if args.engines_per_worker is not None and args.engines_per_worker <= 0:
        raise ValueError(f"--engines-per-worker must be > 0 (or omitted for the default), got {args.engines_per_worker}")
    if args.camal_coef < 0:
        raise ValueError(f"--camal-coef must be >= 0, got {args.camal_coef}")
    if args.mask_source not in MASK_SOURCES:
        raise ValueError(f"unknown --mask-source '{args.mask_source}'; valid: {', '.join(MASK_SOURCES)}")
    if args.reward_transform not in REWARD_TRANSFORMS:
        raise ValueError(f"unknown --reward-transform; valid: {', '.join(REWARD_TRANSFORMS)}")
    for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    batch_size = args.num_envs * args.num_steps
    if batch_size % args.num_minibatches:
        raise ValueError(
            f"--num-minibatches {args.num_minibatches} does not divide the batch "
            f"(num_envs x num_steps = {batch_size}); choose a divisor of {batch_size}"
        )
    if args.total_timesteps < batch_size:
        raise ValueError(f"--total-timesteps {args.total_timesteps} is less than one batch ({batch_size} steps)")


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """Nature CNN; ``conv`` ends in the last convolutional layer, whose output Grad-CAM explains."""

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
        self.head = nn.Sequential(nn.Flatten(), layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU())
        self.actor = layer_init(nn.Linear(512, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Output A of the last conv layer (after its ReLU), for uint8 or float pixels in [0, 255]."""
        return self.conv(pixels.float() / 255.0)

    def get_value(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.critic(self.head(self.features(pixels)))

    def get_action_and_value(self, pixels: torch.Tensor, action: torch.Tensor | None = None):
        logits, value, _ = self.logits_value_features(pixels)
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
        return self.actor(hidden), self.critic(hidden), features, hidden

    def grad_cam(self, features: torch.Tensor, hidden: torch.Tensor, actions: torch.Tensor, size=None) -> torch.Tensor:
        """Differentiable Grad-CAM of ``actions`` in closed form (no double backward), upsampled to ``size``
        (None: at A's 7x7, for ``camal_loss_low_res``)."""
        return linear_head_grad_cam(features, hidden, actions, self.head[1].weight, self.actor.weight, size)


def save_checkpoint(path: Path, agent: Agent, optimizer: optim.Optimizer, iteration: int, global_step: int) -> None:
    """Atomic: written to a temporary file, then renamed over the old checkpoint."""
    state = {
        "model": agent.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "global_step": global_step,
        "num_actions": agent.actor.out_features,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_run_config(run_dir: Path) -> Args:
    config = run_dir / CONFIG
    if not config.is_file() or not (run_dir / CHECKPOINT).is_file():
        raise ValueError(f"--resume {run_dir}: not a run folder (needs {CONFIG} and {CHECKPOINT})")
    saved = json.loads(config.read_text())
    known = {f.name for f in dataclasses.fields(Args)}
    return Args(**{k: v for k, v in saved.items() if k in known})


def attention_images(pixels: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: newest grey frame, attention in red, mask outline in green."""
    frame = pixels[:, -1].float() / 255.0
    attention = maps / (maps.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-8)
    edge = torch.as_tensor(np.stack([mask_outline(m) for m in masks.cpu().numpy()]), device=frame.device).float()
    red = (0.6 * frame + 0.4 * attention).clamp(0, 1)
    green = torch.maximum(0.6 * frame, edge)
    blue = 0.6 * frame
    return torch.stack([red, green, blue], dim=1)


class StopRequested:
    """Ctrl-C / SIGTERM set a flag; training stops at the next safe point and writes a checkpoint."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"signal {signum}: stopping after this update and writing a checkpoint (again to stop at once)")


def main(args: Args) -> Path:
    """Train; bad arguments exit with a one-line error before anything is written."""
    try:
        if args.resume:
            run_dir = Path(args.resume)
            args = load_run_config(run_dir)
            args.resume = str(run_dir)
        check_args(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    args.method = method_label(args)
    args.exp_name = args.exp_name or args.method
    args.batch_size = args.num_envs * args.num_steps
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    if not args.resume:
        run_dir = Path(args.runs_dir) / f"{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
        run_dir.mkdir(parents=True, exist_ok=False)
        (run_dir / CONFIG).write_text(json.dumps(dataclasses.asdict(args), indent=2))
    run_name = run_dir.name

    if args.track:
        try:
            import wandb
        except ImportError:
            sys.exit("error: --track needs wandb: pip install wandb")
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, id=run_name, resume="allow", save_code=True)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    envs = make_vector_env(args.env, args.num_envs, targets=args.targets, reward_transform=args.reward_transform,
                           video_dir=f"videos/{run_name}" if args.capture_video else None,
                           engines_per_worker=args.engines_per_worker)
    try:
        return train(args, run_dir, envs, device)
    finally:
        envs.close()


def train(args: Args, run_dir: Path, envs, device: torch.device) -> Path:
    num_actions = envs.single_action_space.n
    agent = Agent(num_actions).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    start_iteration, global_step = 0, 0
    if args.resume:
        state = torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=False)
        agent.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_iteration, global_step = state["iteration"], state["global_step"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    # purge_step drops events logged after the checkpoint, so a resumed run continues one curve
    writer = SummaryWriter(str(run_dir), purge_step=global_step if args.resume else None)
    if not args.resume:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    mask_generator = torch.Generator(device=device).manual_seed(args.seed + start_iteration)

    obs_shape = envs.single_observation_space["pixels"].shape
    mask_shape = envs.single_observation_space["mask"].shape
    pixels_buf = torch.zeros((args.num_steps, args.num_envs) + obs_shape, dtype=torch.uint8, device=device)
    masks_buf = torch.zeros((args.num_steps, args.num_envs) + mask_shape, dtype=torch.bool, device=device)
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long, device=device)
    logprobs = torch.zeros((args.num_steps, args.num_envs), device=device)
    rewards = torch.zeros((args.num_steps, args.num_envs), device=device)
    dones = torch.zeros((args.num_steps, args.num_envs), device=device)
    values = torch.zeros((args.num_steps, args.num_envs), device=device)

    # a resumed run starts fresh episodes, with seeds it has not used before
    next_obs, _ = envs.reset(seed=args.seed + 1000 * start_iteration)
    next_pixels = torch.as_tensor(next_obs["pixels"], device=device)
    next_mask = torch.as_tensor(next_obs["mask"], device=device).bool()
    next_done = torch.zeros(args.num_envs, device=device)
    recent_returns: deque[float] = deque(maxlen=20)
    stop = StopRequested()
    completed = start_iteration
    start_time, start_step = time.time(), global_step
    progress = tqdm(total=args.num_iterations * args.batch_size, initial=global_step, unit="step",
                    desc=run_dir.name, dynamic_ncols=True, mininterval=2)
    try:
        for iteration in range(start_iteration + 1, args.num_iterations + 1):
            if args.anneal_lr:
                optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

            for step in range(args.num_steps):
                global_step += args.num_envs
                pixels_buf[step] = next_pixels
                masks_buf[step] = next_mask
                dones[step] = next_done
                with torch.no_grad():  # acting: a plain forward pass, no attention
                    action, logprob, _, value = agent.get_action_and_value(next_pixels)
                values[step] = value.flatten()
                actions[step] = action
                logprobs[step] = logprob

                next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
                rewards[step] = torch.as_tensor(reward, device=device).view(-1)
                next_pixels = torch.as_tensor(next_obs["pixels"], device=device)
                next_mask = torch.as_tensor(next_obs["mask"], device=device).bool()
                next_done = torch.as_tensor(np.logical_or(terminations, truncations), device=device).float()
                for episode_return, episode_length in finished_episodes(infos):
                    recent_returns.append(episode_return)
                    writer.add_scalar("charts/episodic_return", episode_return, global_step)
                    writer.add_scalar("charts/episodic_length", episode_length, global_step)
            progress.update(args.batch_size)

            with torch.no_grad():
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

            b_pixels = pixels_buf.reshape((-1,) + obs_shape)
            b_masks = masks_buf.reshape((-1,) + mask_shape)
            b_logprobs = logprobs.reshape(-1)
            b_actions = actions.reshape(-1)
            b_advantages = advantages.reshape(-1)
            b_returns = returns.reshape(-1)
            b_values = values.reshape(-1)

            b_inds = np.arange(args.batch_size)
            clipfracs, attn_losses = [], []
            for epoch in range(args.update_epochs):
                np.random.shuffle(b_inds)
                for start in range(0, args.batch_size, args.minibatch_size):
                    mb_inds = torch.as_tensor(b_inds[start : start + args.minibatch_size], device=device)
                    mb_pixels = b_pixels[mb_inds].float()
                    if args.attn_loss == "rrr":  # RRR differentiates w.r.t. pixels scaled to [0, 1]
                        mb_unit_pixels = (mb_pixels / 255.0).requires_grad_(True)
                        mb_pixels = mb_unit_pixels * 255.0
                    logits, newvalue, features, hidden = agent.logits_value_features_hidden(mb_pixels)
                    dist = Categorical(logits=logits)
                    newlogprob = dist.log_prob(b_actions[mb_inds])
                    entropy = dist.entropy()
                    logratio = newlogprob - b_logprobs[mb_inds]
                    ratio = logratio.exp()

                    with torch.no_grad():
                        old_approx_kl = (-logratio).mean()
                        approx_kl = ((ratio - 1) - logratio).mean()
                        clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())  # no .item(): no sync

                    mb_advantages = b_advantages[mb_inds]
                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                    pg_loss1 = -mb_advantages * ratio
                    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

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

                    # ---------------- CAMAL: attention loss on this minibatch ----------------
                    if args.attn_loss != "none":
                        mb_masks = training_masks(b_masks[mb_inds], args.mask_source, mask_generator)
                        if args.attn_loss == "camal":
                            cams = agent.grad_cam(features, hidden, b_actions[mb_inds])  # 7x7, see camal_loss_low_res
                            attn_loss = camal_loss_low_res(cams, mb_masks)
                        else:
                            attn_loss = rrr_loss(mb_unit_pixels, newlogprob, mb_masks)
                        loss = loss + args.camal_coef * attn_loss
                        attn_losses.append(attn_loss.detach())
                    # ---------------------------------------------------------------------------

                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()

                if args.target_kl is not None and approx_kl > args.target_kl:
                    break

            y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

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
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            recent = f"{np.mean(recent_returns):.1f}" if recent_returns else "n/a"
            progress.set_postfix(sps=sps, ret=recent)

            completed = iteration
            if iteration % args.save_every == 0:
                save_checkpoint(run_dir / CHECKPOINT, agent, optimizer, completed, global_step)
            if stop.requested:
                break
    finally:
        # the model as of the last completed update; a resumed run repeats any unfinished rollout
        save_checkpoint(run_dir / CHECKPOINT, agent, optimizer, completed, completed * args.batch_size)
        progress.close()
        writer.close()
    tqdm.write(f"run folder: {run_dir}")
    return run_dir


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
    logits, _, features = agent.logits_value_features(pixels)
    maps = grad_cam(features, logits, actions, masks.shape[-2:], create_graph=False).detach()
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


if __name__ == "__main__":
    main(tyro.cli(Args))
