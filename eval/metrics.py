"""Metrics of a trained agent's attention (docs/method.md s.5).

Conventions shared by every function here:
- `maps` are un-normalised attention maps M >= 0, shape (B, H, W);
- `masks` are binary ground-truth masks G, shape (B, H, W), bool or 0/1;
- results are per-frame tensors on the input's device, so callers aggregate as they like.

Frames whose map is all zero have no place the agent "looks at": relevance mass, relevance
rank and the pointing game are NaN there (rather than an arbitrary tie-break), and
`zero_maps` lets the caller count them.

Ties: after the ReLU and the upsampling many map pixels tie (all the zeros, flat runs at the
maximum). Ranked metrics (relevance rank, the deletion / insertion pixel order) break ties at
random with the caller's seeded generator (``ties="random"``, the default); the pointing game
counts a hit when any tied maximum is on the target (``ties="any"``). ``ties="index"`` /
``ties="first"`` give the row-major tie-break (top rows first) used before, for comparison.
Frames with an empty mask should be filtered out by the caller (docs/method.md s.5: the metrics
are computed on frames with a non-empty mask); relevance rank is
NaN for them (K = 0).
"""

from typing import Callable, NamedTuple

import torch

from agents.attention import relevance_mass  # noqa: F401  (defined once, shared with training)


def _flatten(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) map and mask -> (B, H*W) float map and bool mask."""
    if maps.shape != masks.shape or maps.dim() != 3:
        raise ValueError(f"expected maps and masks of equal shape (B, H, W), got "
                         f"{tuple(maps.shape)} and {tuple(masks.shape)}")
    return maps.flatten(1).float(), masks.flatten(1).bool()


def zero_maps(maps: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True where the map is all zero (sum(M) = 0)."""
    return maps.flatten(1).float().sum(dim=1) == 0


def descending_order(flat_maps: torch.Tensor, ties: str = "random",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) pixel indices by value descending; ties at random (``generator``) or by index (``"index"``)."""
    if ties == "index":
        return torch.sort(flat_maps, dim=1, descending=True, stable=True).indices
    if ties != "random":
        raise ValueError(f"ties must be 'random' or 'index', got {ties!r}")
    # a stable sort of the values in a random order leaves tied pixels in that random order
    shuffle = random_permutations(flat_maps, generator)
    ranked = torch.sort(flat_maps.gather(1, shuffle), dim=1, descending=True, stable=True).indices
    return shuffle.gather(1, ranked)


def random_permutations(flat_maps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) an independent uniform permutation of the N pixel indices per frame, on the maps' device."""
    noise_device = generator.device if generator is not None else flat_maps.device
    noise = torch.rand(flat_maps.shape, generator=generator, device=noise_device)
    return noise.to(flat_maps.device).argsort(dim=1)


def relevance_rank(maps: torch.Tensor, masks: torch.Tensor, ties: str = "random",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) |top_K(M) ∩ G| / K with K = sum(G) per frame.

    Ties in M (e.g. the many exact zeros left by Grad-CAM's ReLU) are broken at random (``generator``),
    or by pixel index, row-major, with ``ties="index"``. NaN where the map is all zero or K = 0.
    """
    flat_maps, flat_masks = _flatten(maps, masks)
    order = descending_order(flat_maps, ties, generator)
    rank_of_pixel = torch.argsort(order, dim=1)
    target_count = flat_masks.sum(dim=1, keepdim=True)
    in_top_k = rank_of_pixel < target_count
    hits = (in_top_k & flat_masks).sum(dim=1).float()
    rank = hits / target_count.squeeze(1).float()  # 0/0 -> NaN for empty masks
    return rank.masked_fill(zero_maps(maps), float("nan"))


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, ties: str = "any") -> torch.Tensor:
    """(B,) 1.0 if argmax M is a target pixel else 0.0; NaN where the map is all zero.

    Tied maxima: a hit if any of them is on the target (``"any"``), or only the first in row-major
    order counts (``"first"``, torch.argmax's rule).
    """
    flat_maps, flat_masks = _flatten(maps, masks)
    if ties == "any":
        peaks = flat_maps == flat_maps.amax(dim=1, keepdim=True)
        hit = (peaks & flat_masks).any(dim=1).float()
    elif ties == "first":
        hit = flat_masks.gather(1, flat_maps.argmax(dim=1, keepdim=True)).squeeze(1).float()
    else:
        raise ValueError(f"ties must be 'any' or 'first', got {ties!r}")
    return hit.masked_fill(zero_maps(maps), float("nan"))


def chance_levels(masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Expected value of each metric under uniform attention, per frame: (B,) tensors.

    All three equal the target fraction p = sum(G) / (H * W):
    - mass: a constant map puts the same mass on every pixel, so the share on G is p exactly;
    - rank: with no preference between pixels, top_K is a uniformly random K-subset; its overlap
      with G is hypergeometric with mean K * K / (H * W), and dividing by K = sum(G) gives p;
    - pointing: the argmax of a map with no preference is a uniformly random pixel, which lands
      on G with probability p.
    (A literally uniform map fed to `relevance_rank` / `pointing_game` is a tie resolved by pixel
    index, so it scores a single draw, not this expectation.)
    """
    flat_masks = masks.flatten(1).bool()
    target_fraction = flat_masks.sum(dim=1).float() / flat_masks.shape[1]
    return {"mass": target_fraction,
            "rank": target_fraction.clone(),
            "pointing": target_fraction.clone()}


class FaithfulnessCurves(NamedTuple):
    fractions: torch.Tensor        # (n+1,) fraction f of pixels deleted / inserted
    deletion_curve: torch.Tensor   # (B, n+1) pi(a*|x_f) with the top f of pixels at baseline
    insertion_curve: torch.Tensor  # (B, n+1) pi(a*|x_f) with only the top f of pixels restored
    deletion_auc: torch.Tensor     # (B,) lower is more faithful
    insertion_auc: torch.Tensor    # (B,) higher is more faithful


def pixel_order(maps: torch.Tensor, order: str = "map", generator: torch.Generator | None = None,
                ties: str = "random") -> torch.Tensor:
    """(B, H*W) flat pixel indices, most important first.

    "map": by M descending, ties broken at random (``generator``; ``ties="index"``: row-major);
    "random": an independent uniform permutation per frame, the control.
    """
    flat_maps = maps.flatten(1).float()
    if order == "map":
        return descending_order(flat_maps, ties, generator)
    if order == "random":
        return random_permutations(flat_maps, generator)
    raise ValueError(f"order must be 'map' or 'random', got {order!r}")


@torch.no_grad()
def deletion_insertion(prob_fn: Callable[[torch.Tensor], torch.Tensor], obs: torch.Tensor,
                       maps: torch.Tensor, actions: torch.Tensor, steps: int = 20,
                       order: str = "map", generator: torch.Generator | None = None,
                       ties: str = "random") -> FaithfulnessCurves:
    """Deletion / insertion curves of pi(a*|x) (Petsiuk et al. 2018) with baseline 0.

    obs: (B, C, H, W) stacked frames; a pixel is a spatial position, deleted or restored in all
    C frames at once. maps: (B, H, W). actions: (B,) a* = argmax pi on the clean input.
    prob_fn: (N, C, H, W) -> (N, num_actions) action probabilities (put the model in eval mode).
    At fraction f = i / steps, round(f * H * W) pixels are deleted (resp. restored); tied map values
    are ordered at random with ``generator`` (``ties="index"``: row-major).
    """
    batch, _, height, width = obs.shape
    if maps.shape != (batch, height, width):
        raise ValueError(f"maps must be (B, H, W) = {(batch, height, width)}, "
                         f"got {tuple(maps.shape)}")
    num_pixels = height * width
    ranking = pixel_order(maps, order, generator, ties)
    rank_of_pixel = torch.argsort(ranking, dim=1).view(batch, 1, height, width)
    action_index = actions.long().view(batch, 1)

    deletion, insertion = [], []
    for step in range(steps + 1):
        num_changed = (step * num_pixels + steps // 2) // steps  # round(f * H * W), exact ints
        changed = rank_of_pixel < num_changed  # (B, 1, H, W), broadcast over the C frames
        deleted = obs * ~changed
        inserted = obs * changed
        probs = prob_fn(torch.cat([deleted, inserted], dim=0))
        chosen = probs.gather(1, torch.cat([action_index, action_index], dim=0)).squeeze(1)
        deletion.append(chosen[:batch])
        insertion.append(chosen[batch:])

    deletion_curve = torch.stack(deletion, dim=1).float()
    insertion_curve = torch.stack(insertion, dim=1).float()
    fractions = torch.linspace(0.0, 1.0, steps + 1, device=obs.device)
    return FaithfulnessCurves(
        fractions=fractions,
        deletion_curve=deletion_curve,
        insertion_curve=insertion_curve,
        deletion_auc=torch.trapezoid(deletion_curve, dx=1.0 / steps, dim=1),
        insertion_auc=torch.trapezoid(insertion_curve, dx=1.0 / steps, dim=1),
    )


@torch.no_grad()
def occlusion_drop(prob_fn: Callable[[torch.Tensor], torch.Tensor], obs: torch.Tensor, regions: torch.Tensor,
                   actions: torch.Tensor) -> torch.Tensor:
    """(B,) pi(a*|x) - pi(a*|x with ``regions`` at the removal baseline): the drop of the chosen action's
    probability when a region (B, H, W) is occluded in all C stacked frames with the deletion baseline 0."""
    occluded = occlude(obs, regions)
    probs = prob_fn(torch.cat([obs, occluded], dim=0))
    index = actions.long().view(-1, 1).repeat(2, 1)
    chosen = probs.gather(1, index).squeeze(1)
    return chosen[:len(obs)] - chosen[len(obs):]


def dilate_to_cells(masks: torch.Tensor, map_size: tuple[int, int]) -> torch.Tensor:
    """``masks`` (B, H, W) grown by half a Grad-CAM cell on every side (a square of about one cell, 13 x 13
    pixels for 84 x 84 frames and a 7 x 7 map, around each target pixel): a target region as coarse as the
    map that explains it, for occlusion tests."""
    cell = min(masks.shape[-2] // map_size[0], masks.shape[-1] // map_size[1])
    half = cell // 2
    grown = torch.nn.functional.max_pool2d(masks[:, None].float(), 2 * half + 1, stride=1, padding=half)
    return grown[:, 0].bool().to(masks.dtype)


def occlude(obs: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """``obs`` (B, C, H, W) with the pixels of ``regions`` (B, H, W) set to the removal baseline 0 in every frame."""
    return obs * ~regions.bool().unsqueeze(1)
