"""PPO with the CAMAL attention loss on ViZDoom, in the manner of CleanRL's ppo_atari.py.

    python agents/ppo_camal.py --env basic                      # CAMAL (default)
    python agents/ppo_camal.py --env basic --attn-loss none     # vanilla PPO
    tensorboard --logdir runs

The CAMAL block (marked below) computes a differentiable Grad-CAM of the policy for the action taken
in the rollout, on every minibatch, and adds lambda * mean(beta - alpha) to the PPO loss
(docs/method.md s.3-4). Acting is a plain forward pass.

Where the logic is CleanRL's, so are the names and the section comments; what a run does on
--resume, Ctrl-C / SIGTERM and bad input lives in agents/ppo_args.py (the arguments and their checks),
agents/run_folder.py (the run folder, checkpoint and resume) and agents/signals.py.
"""


from __future__ import annotations

import functools
import random
import shutil
import sys
import time
from collections import deque
from pathlib import Path

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
from agents.attention import attention_loss, project_masks, training_masks
from agents.attention_logging import log_attention, warn_if_no_target
from agents.checks import warn
from agents.network import Agent
from agents.ppo_args import Args, check_args, create_run_dir, merge_resume, resume_args, set_runtime_fields
from agents.run_folder import CHECKPOINT, CheckpointMismatch, load_checkpoint, save_checkpoint, start_point
from agents.signals import Interrupted, NonFiniteLoss, StopRequested
from envs import make_env_groups
from scenarios import is_config_path


def record_total_timesteps(args: Args, run_dir: Path, iteration: int) -> None:
    """A resumed run given another --total-timesteps keeps it in its config, for the next resume."""
    saved_total = run_folder.record_total_timesteps(args, run_dir)
    if saved_total is not None and args.anneal_lr:
        warn(f"training to {args.total_timesteps} steps instead of {saved_total}: the learning rate now anneals to 0 "
             f"over the new total ({(1 - iteration / args.num_iterations) * args.learning_rate:.3g} at the resume point)")


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


def finished_episodes(infos: dict):
    """(true return, length) of each episode that ended on this step (same-step autoreset)."""
    final = infos.get("final_info", {})
    if "episode" not in final:
        return []
    ended = final["_episode"]
    return [(float(r), int(l)) for r, l, e in zip(final["episode"]["r"], final["episode"]["l"], ended) if e]


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
