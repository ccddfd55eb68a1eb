"""What a PPO run logs of its attention to TensorBoard: relevance mass, mask and zero-map fractions, images."""

from __future__ import annotations

import numpy as np
import torch

from agents.attention import has_target, relevance_mass
from agents.checks import warn
from masks import mask_outline, targets_for

NO_TARGET_UPDATES = 3  # an attention-loss run that sees no target in this many first updates is warned


def attention_images(pixels: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: newest grey frame, attention in red, mask outline in green."""
    frame = pixels[:, -1].float() / 255.0
    attention = maps / (maps.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-8)
    edge = torch.as_tensor(np.stack([mask_outline(m) for m in masks.cpu().numpy()]), device=frame.device).float()
    red = (0.6 * frame + 0.4 * attention).clamp(0, 1)
    green = torch.maximum(0.6 * frame, edge)
    blue = 0.6 * frame
    return torch.stack([red, green, blue], dim=1)



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


def warn_if_no_target(args, b_masks: torch.Tensor, updates_done: int, updates_planned: int) -> bool:
    """Whether this rollout saw a target; warns once when an attention-loss run saw none in its first updates."""
    seen = bool(has_target(b_masks).any())
    if not seen and args.attn_loss != "none" and updates_done == min(NO_TARGET_UPDATES, updates_planned):
        warn(f"no frame of the first {updates_done} updates had a target in its mask (targets: "
             f"{', '.join(targets_for(args.env, args.targets))}): the {args.attn_loss} loss is 0 and the run "
             f"trains as vanilla PPO; check --targets")
    return seen
