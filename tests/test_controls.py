"""The controls: RRR's penalty and the uninformative mask sources."""

import pytest
import torch

from agents.attention import random_blob_masks, rrr_loss, shuffled_masks, training_masks


def region_masks(batch=8):
    masks = torch.zeros(batch, 84, 84, dtype=torch.bool)
    for b in range(batch):
        masks[b, 5 + 3 * b : 20 + 3 * b, 10 + b : 30 + 2 * b] = True
    masks[-1] = False  # one frame without ground truth
    return masks


def log_probs_of(inputs, weights):
    """A 'policy' whose log-probability is linear in the pixels: its input gradient is ``weights``."""
    return (inputs * weights).flatten(1).sum(dim=1)


def test_rrr_is_zero_when_the_input_gradient_vanishes_outside_the_mask():
    masks = region_masks()
    inputs = torch.rand(8, 4, 84, 84, requires_grad=True)
    inside_only = masks.unsqueeze(1).float().expand(-1, 4, -1, -1)
    assert rrr_loss(inputs, log_probs_of(inputs, inside_only), masks).item() == 0.0


def test_rrr_grows_with_the_input_gradient_outside_the_mask():
    masks = region_masks()
    outside = (~masks).unsqueeze(1).float().expand(-1, 4, -1, -1)
    penalties = []
    for scale in (0.5, 1.0, 2.0):
        inputs = torch.rand(8, 4, 84, 84, requires_grad=True)
        penalties.append(rrr_loss(inputs, log_probs_of(inputs, scale * outside), masks).item())
    # squared gradient: doubling it multiplies the penalty by 4; frames without ground truth are left out
    expected = [s**2 * outside[:-1].flatten(1).sum(dim=1).mean().item() for s in (0.5, 1.0, 2.0)]
    assert penalties == pytest.approx(expected, rel=1e-5)


def test_rrr_is_differentiable_for_training():
    inputs = torch.rand(4, 4, 84, 84, requires_grad=True)
    weights = torch.rand(4, 84, 84, requires_grad=True)
    masks = region_masks(4)
    rrr_loss(inputs, (inputs * weights.unsqueeze(1)).flatten(1).sum(dim=1), masks).backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0


def test_random_masks_have_the_true_area_and_are_not_the_true_masks():
    masks = region_masks()
    random = random_blob_masks(masks, torch.Generator().manual_seed(0))
    assert random.dtype == masks.dtype and random.shape == masks.shape
    assert torch.equal(random.flatten(1).sum(dim=1), masks.flatten(1).sum(dim=1))
    overlap = (random & masks).flatten(1).sum(dim=1).float() / masks.flatten(1).sum(dim=1).clamp(min=1)
    assert (overlap[:-1] < 0.5).float().mean() >= 0.75  # mostly elsewhere
    assert not random[-1].any()
    for blob in random[:-1]:  # one compact blob: at most a quarter disc's extent (in a corner)
        rows, cols = blob.nonzero(as_tuple=True)
        extent = 2.3 * float(blob.sum()) ** 0.5 + 2
        assert rows.max() - rows.min() < extent and cols.max() - cols.min() < extent
    assert not random_blob_masks(torch.zeros_like(masks)).any()


def test_shuffled_masks_are_a_permutation_without_fixed_points():
    masks = region_masks()
    shuffled = shuffled_masks(masks, torch.Generator().manual_seed(1))
    flat, moved = masks.flatten(1), shuffled.flatten(1)
    sources = [[j for j in range(len(flat)) if torch.equal(moved[i], flat[j])] for i in range(len(flat))]
    assert all(len(s) == 1 for s in sources)  # every mask is one of the batch's (these are distinct)
    assert sorted(s[0] for s in sources) == list(range(len(flat)))  # each used once
    assert all(s[0] != i for i, s in enumerate(sources))  # never a frame's own


def test_training_masks_rejects_an_unknown_source():
    assert torch.equal(training_masks(region_masks(), "labels"), region_masks())
    with pytest.raises(ValueError, match="unknown mask source 'noise'; valid: labels, random, shuffled"):
        training_masks(region_masks(), "noise")
