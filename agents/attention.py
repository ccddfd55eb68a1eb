"""Attention of a policy and the losses that shape it (docs/method.md s.3-4).

Defined once here; the agent (agents/ppo_camal.py) and the evaluation (eval/) both import it.
Shapes: features A (B, K, h, w), logits (B, num_actions), masks G (B, H, W) in {0, 1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MASK_SOURCES = ("labels", "random", "shuffled", "uniform")
ATTENTION_LOSSES = ("camal", "rrr", "entropy")


def grad_cam(
    features: torch.Tensor,
    logits: torch.Tensor,
    actions: torch.Tensor,
    size: tuple[int, int],
    create_graph: bool = True,
) -> torch.Tensor:
    """Grad-CAM of the logit of ``actions`` w.r.t. ``features``: M >= 0 upsampled to ``size``, (B, H, W).

    ``w_k = mean_ij dz_a/dA_kij``; ``M = ReLU(sum_k w_k A_k)``. With ``create_graph=True`` the map is
    differentiable, so a loss on it trains the network through the weights too. Each sample's logit
    depends only on its own features, so the gradient of the batch sum gives every sample's gradient.
    """
    chosen = logits.gather(1, actions.long().view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(chosen, features, create_graph=create_graph)
    return cam_from_weights(grads.mean(dim=(2, 3)), features, size)


def linear_head_grad_cam(
    features: torch.Tensor,
    hidden: torch.Tensor,
    actions: torch.Tensor,
    fc_weight: torch.Tensor,
    actor_weight: torch.Tensor,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """:func:`grad_cam` in closed form for ``logits = actor(ReLU(fc(flatten(A))))``, (B, H, W).

    There ``dz_a/dA = (W_actor[a] * relu'(pre)) @ W_fc`` reshaped to A's shape, so
    ``w_k = (W_actor[a] * [hidden > 0]) @ mean_ij W_fc[:, k, i, j]``: no autograd pass, and the map is
    differentiable (through A, W_fc and W_actor) without a double backward. ``hidden`` is
    ``ReLU(fc(flatten(A)))``, (B, n); ``fc_weight`` (n, K*h*w), ``actor_weight`` (num_actions, n).
    Equal to ``grad_cam(features, logits, actions, size, create_graph=True)`` up to float rounding.
    ``size=None`` leaves the map at A's resolution (h, w), for :func:`camal_loss_low_res`.
    """
    channels = features.shape[1]
    # relu' is a 0/1 step with no gradient of its own, as in autograd's ReLU backward
    upstream = actor_weight[actions.long()] * (hidden > 0).to(actor_weight.dtype)
    fc_channel_means = fc_weight.view(fc_weight.shape[0], channels, -1).mean(dim=2)
    return cam_from_weights(upstream @ fc_channel_means, features, size)


def cam_from_weights(weights: torch.Tensor, features: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``M = ReLU(sum_k w_k A_k)`` for channel weights (B, K), upsampled bilinearly to ``size`` (None: not)."""
    cam = F.relu((weights[:, :, None, None] * features).sum(dim=1, keepdim=True))
    if size is None:
        return cam[:, 0]
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]


def upsampling_matrix(source: int, target: int, like: torch.Tensor) -> torch.Tensor:
    """(target, source): 1-D linear interpolation as ``F.interpolate(..., align_corners=False)`` does it."""
    identity = torch.eye(source, device=like.device, dtype=like.dtype)[None]
    return F.interpolate(identity, size=target, mode="linear", align_corners=False)[0].T


def peak_samples(source: int, target: int, like: torch.Tensor) -> torch.Tensor:
    """The output indices of a 1-D linear upsampling (``upsampling_matrix``) where its maximum can be.

    Between two neighbouring source pixels (and beyond the outer ones, where the source coordinate is
    clamped) the upsampled values are a linear function of the output index, so the largest is at the
    first or last output index of each such piece: for 7 -> 84, 14 of the 84. Applied to the rows and
    the columns, the maximum of a bilinearly upsampled map is on these 14 x 14 pixels.
    """
    position = ((torch.arange(target, device=like.device) + 0.5) * source / target - 0.5).clamp(min=0)
    piece = position.floor().clamp(max=source - 1)
    starts = torch.ones(target, dtype=torch.bool, device=like.device)
    starts[1:] = piece[1:] != piece[:-1]
    ends = torch.ones(target, dtype=torch.bool, device=like.device)
    ends[:-1] = piece[:-1] != piece[1:]
    return torch.nonzero(starts | ends).flatten()


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """``N = M / (max M + 1e-8)`` per map, in [0, 1]; an all-zero map stays zero."""
    peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    return maps / (peak + 1e-8)


def has_target(masks: torch.Tensor) -> torch.Tensor:
    """(B,) bool: frames whose mask is non-empty, the only ones that carry ground truth."""
    return masks.flatten(1).any(dim=1)


def attention_inside_outside(normalised: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame: alpha = mean attention on the target pixels, beta = mean attention elsewhere."""
    masks = masks.to(normalised.dtype).flatten(1)
    normalised = normalised.flatten(1)
    inside = masks.sum(dim=1)
    outside = masks.shape[1] - inside
    alpha = (normalised * masks).sum(dim=1) / inside.clamp(min=1.0)
    beta = (normalised * (1.0 - masks)).sum(dim=1) / outside.clamp(min=1.0)
    return alpha, beta


def camal_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``1/|B'| sum_{b in B'} (beta_b - alpha_b)`` over frames with a non-empty mask; 0 if there are none.

    ``maps`` are un-normalised Grad-CAM maps; the coefficient lambda is applied by the caller.
    """
    valid = has_target(masks)
    if not valid.any():
        return maps.sum() * 0.0  # keeps the graph, so backward() works on an empty batch
    alpha, beta = attention_inside_outside(normalise_maps(maps[valid]), masks[valid])
    return (beta - alpha).mean()


@dataclass(frozen=True)
class ProjectedMasks:
    """Masks (B, H, W) as ``camal_loss_low_res`` sees them through the upsampling of (h, w) maps.

    ``on_map = R^T G C`` (B, h, w) weighs each map pixel by the mask pixels it reaches once upsampled;
    ``inside`` (B,) counts the target pixels; ``size`` is (H, W). ``projected[indices]`` selects frames.
    """

    on_map: torch.Tensor
    inside: torch.Tensor
    size: tuple[int, int]

    def __getitem__(self, indices) -> ProjectedMasks:
        return ProjectedMasks(self.on_map[indices], self.inside[indices], self.size)


def project_masks(masks: torch.Tensor, map_size: tuple[int, int]) -> ProjectedMasks:
    """The part of ``camal_loss_low_res`` that depends on the masks alone: the trainer computes it once per
    rollout, since the masks stay the same over its epochs and minibatches."""
    height, width = masks.shape[1:]
    like = torch.empty(0, device=masks.device)
    rows, cols = upsampling_matrix(map_size[0], height, like), upsampling_matrix(map_size[1], width, like)
    masks = masks.to(like.dtype)
    return ProjectedMasks(rows.T @ (masks @ cols), masks.sum(dim=(1, 2)), (height, width))


def camal_loss_low_res(cams: torch.Tensor, masks: torch.Tensor | ProjectedMasks) -> torch.Tensor:
    """``camal_loss(upsampled cams, masks)`` for Grad-CAM maps (B, h, w) before their bilinear upsampling
    to the masks' (B, H, W), computed without the upsampled maps' backward.

    The upsampling is linear and separable, ``up = R M C^T``, so the attention on and off the mask are
    ``<M, R^T G C>`` and ``<M, R^T 1 C> - <M, R^T G C>``; the peak ``max up`` is on one of the pixels
    where a bilinear upsampling can peak (``peak_samples``: 14 x 14 of 84 x 84), and its gradient is
    that of the peak pixel, ``R[y] M C[x]^T``. Equal up to float rounding (where several pixels tie
    for the peak, the gradient is that of the first candidate, not split among them as ``amax``'s).
    ``masks`` may be given as ``project_masks(masks, (h, w))``. Frames without a target weigh 0 in the
    mean (no boolean indexing, no host sync); with none at all the loss is 0 with zero gradients.
    """
    if isinstance(masks, torch.Tensor):
        masks = project_masks(masks, cams.shape[1:])
    height, width = masks.size
    rows = upsampling_matrix(cams.shape[1], height, cams)
    cols = upsampling_matrix(cams.shape[2], width, cams)
    with torch.no_grad():  # the peak pixel, on the candidate rows and columns only (peak_samples)
        peak_rows, peak_cols = peak_samples(cams.shape[1], height, cams), peak_samples(cams.shape[2], width, cams)
        # max(dim).indices: the first maximum, as argmax, but 4-10x faster on the CPU
        peak_pixel = (rows[peak_rows] @ cams @ cols[peak_cols].T).flatten(1).max(dim=1).indices
        peak_y, peak_x = peak_rows[peak_pixel // len(peak_cols)], peak_cols[peak_pixel % len(peak_cols)]
    peak = torch.einsum("bi,bij,bj->b", rows[peak_y], cams, cols[peak_x])
    scale = peak + 1e-8  # as in normalise_maps
    on_mask = (cams * masks.on_map).sum(dim=(1, 2))
    total = (cams * torch.outer(rows.sum(dim=0), cols.sum(dim=0))).sum(dim=(1, 2))
    alpha = on_mask / scale / masks.inside.clamp(min=1.0)
    outside = height * width - masks.inside
    # no outside (uniform masks): beta is 0, not the float rounding left by total - on_mask
    beta = torch.where(outside > 0, (total - on_mask) / scale / outside.clamp(min=1.0), torch.zeros_like(total))
    valid = (masks.inside > 0).to(cams.dtype)
    return ((beta - alpha) * valid).sum() / valid.sum().clamp(min=1.0)


def entropy_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The generic attention regulariser: the entropy of each map taken as a distribution over its pixels,
    ``H(p) / log(H W)`` with ``p = (M + eps) / sum(M + eps)``, in [0, 1], averaged over the frames with a
    non-empty mask (the frames CAMAL's loss averages over), 0 with zero gradients if there are none.

    ``maps`` (B, H, W) are the un-normalised Grad-CAM maps; the masks only choose the frames. Dividing by
    ``log(H W)`` puts the loss on CAMAL's scale (a uniform map 1, a map on one pixel 0); ``eps`` keeps
    ``p log p`` finite and makes an all-zero map uniform (entropy 1), so switching attention off does not
    lower the loss.
    """
    flat = maps.flatten(1) + 1e-12
    p = flat / flat.sum(dim=1, keepdim=True)
    entropy = -(p * p.log()).sum(dim=1) / math.log(flat.shape[1])
    valid = has_target(masks).to(maps.dtype)
    return (entropy * valid).sum() / valid.sum().clamp(min=1.0)


def rrr_loss(inputs: torch.Tensor, log_probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Right for the Right Reasons (Ross et al. 2017) with the taken action's log-probability.

    ``1/|B'| sum_{b in B'} sum_{c,i,j} (1 - G_bij) (d log pi(a_b|x_b) / dx_bcij)^2``: the squared input
    gradient on pixels outside the mask, in every stacked frame c, over frames with a non-empty mask.
    ``inputs`` (B, C, H, W) must require grad and ``log_probs`` (B,) be computed from them.
    """
    valid = has_target(masks)
    (grads,) = torch.autograd.grad(log_probs.sum(), inputs, create_graph=True)
    if not valid.any():
        return grads.sum() * 0.0
    outside = (1.0 - masks[valid].to(grads.dtype)).unsqueeze(1)
    return (grads[valid] ** 2 * outside).flatten(1).sum(dim=1).mean()


def relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) ``sum(M*G)/sum(M)``: share of the attention on the targets; NaN for an all-zero map."""
    total = maps.flatten(1).sum(dim=1)
    inside = (maps * masks.to(maps.dtype)).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-12), torch.full_like(total, float("nan")))


def random_blob_masks(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Masks with the same area as ``masks``, one disc-like blob per frame at a random centre.

    The blob is the ``sum(G)`` pixels nearest the centre (ties broken at random), so the area is exact.
    """
    batch, height, width = masks.shape
    device = masks.device
    areas = masks.flatten(1).sum(dim=1).long()
    rows = torch.arange(height, device=device).view(1, -1, 1).float()
    cols = torch.arange(width, device=device).view(1, 1, -1).float()
    centre_r = torch.rand(batch, 1, 1, generator=generator, device=device) * height
    centre_c = torch.rand(batch, 1, 1, generator=generator, device=device) * width
    distance = (rows - centre_r) ** 2 + (cols - centre_c) ** 2
    distance = distance + 1e-3 * torch.rand(distance.shape, generator=generator, device=device)
    largest_area = int(areas.max()) if batch else 0
    # the largest_area nearest pixels, nearest first (a partial sort: masks cover a few % of a frame)
    nearest = distance.flatten(1).topk(largest_area, dim=1, largest=False).indices
    inside = torch.arange(largest_area, device=device).view(1, -1) < areas.view(-1, 1)
    blob = torch.zeros(batch, height * width, dtype=torch.bool, device=device).scatter_(1, nearest, inside)
    return blob.view(batch, height, width).to(masks.dtype)


def shuffled_masks(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each frame gets another frame's mask: a random permutation of the batch with no fixed point."""
    batch = masks.shape[0]
    if batch < 2:
        return masks.clone()
    order = torch.randperm(batch, generator=generator, device="cpu").to(masks.device)
    shuffled = torch.empty_like(masks)
    shuffled[order] = masks[order.roll(-1)]
    return shuffled


def uniform_masks(masks: torch.Tensor) -> torch.Tensor:
    """Every pixel is a target on the frames that have one (the others stay empty, so the same frames count).

    CAMAL's loss then has no outside (beta = 0) and reduces to ``-mean(N)``: it pulls the peak-normalised map
    towards a flat one, attention spread over the whole frame.
    """
    return has_target(masks).view(-1, 1, 1).expand_as(masks).to(masks.dtype).clone()


def training_masks(masks: torch.Tensor, source: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The masks the attention loss sees: the true ones (``labels``) or an uninformative control."""
    if source == "labels":
        return masks
    if source == "uniform":
        return uniform_masks(masks)
    if source == "random":
        return random_blob_masks(masks, generator)
    if source == "shuffled":
        return shuffled_masks(masks, generator)
    raise ValueError(f"unknown mask source '{source}'; valid: {', '.join(MASK_SOURCES)}")


def attention_loss(
    kind: str,
    masks: torch.Tensor | ProjectedMasks,
    cams: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
    log_probs: torch.Tensor | None = None,
    maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention loss of a minibatch, before its coefficient lambda: ``camal`` on ``cams``, the
    differentiable Grad-CAM maps of the taken actions at the conv layer's resolution (B, h, w)
    (``linear_head_grad_cam`` without a size; see ``camal_loss_low_res``, which also takes the masks as
    ``project_masks`` gives them), or ``rrr`` on the input
    gradient of ``log_probs`` (``inputs`` must require grad and be what ``log_probs`` was computed from),
    or ``entropy`` on ``maps``, the same Grad-CAM maps upsampled to the masks' size (B, H, W)."""
    if kind == "camal":
        return camal_loss_low_res(cams, masks)
    if kind == "rrr":
        return rrr_loss(inputs, log_probs, masks)
    if kind == "entropy":
        return entropy_loss(maps, masks)
    raise ValueError(f"unknown attention loss '{kind}'; valid: {', '.join(ATTENTION_LOSSES)}")
