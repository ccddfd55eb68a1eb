"""The controls: RRR's penalty and the uninformative mask sources."""

import numpy as np
import pytest
import torch

from agents.attention import (camal_loss, camal_loss_low_res, entropy_loss, random_blob_masks, rrr_loss,
                              shuffled_masks, training_masks)


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


def numpy_entropy(maps, masks):
    """The documented entropy loss, written with numpy: H(p) / log(HW) per frame, mean over frames with a target."""
    flat = maps.reshape(len(maps), -1).astype(np.float64) + 1e-12
    p = flat / flat.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(flat.shape[1])
    valid = masks.reshape(len(masks), -1).any(axis=1)
    return entropy[valid].mean() if valid.any() else 0.0


def test_entropy_loss_is_one_for_a_uniform_map_and_zero_for_a_map_on_one_pixel():
    masks = region_masks(2)
    masks[-1] = masks[0]
    uniform = torch.full((2, 84, 84), 0.3)
    one_hot = torch.zeros(2, 84, 84)
    one_hot[:, 40, 17] = 2.0
    assert entropy_loss(uniform, masks).item() == pytest.approx(1.0, abs=1e-6)
    assert entropy_loss(one_hot, masks).item() == pytest.approx(0.0, abs=1e-5)


def test_entropy_loss_equals_a_numpy_reference_and_leaves_out_frames_without_a_target():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(8, 84, 84, generator=generator) ** 4  # uneven maps, one of them all zero
    maps[2] = 0.0
    masks = region_masks()  # the last frame has no target
    expected = numpy_entropy(maps.numpy(), masks.numpy())
    assert entropy_loss(maps, masks).item() == pytest.approx(expected, rel=1e-5)
    # a frame without a target weighs 0, as in CAMAL's loss: changing its map changes nothing
    changed = maps.clone()
    changed[-1] = torch.rand(84, 84, generator=generator)
    assert entropy_loss(changed, masks).item() == entropy_loss(maps, masks).item()
    assert entropy_loss(maps, torch.zeros_like(masks)).item() == 0.0


def test_entropy_loss_is_differentiable_and_its_descent_concentrates_the_map():
    maps = (torch.rand(4, 84, 84, generator=torch.Generator().manual_seed(1)) + 0.1).requires_grad_(True)
    masks = region_masks(4)
    masks[-1] = masks[0]
    loss = entropy_loss(maps, masks)
    loss.backward()
    assert torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0
    stepped = (maps - 50.0 * maps.grad).clamp(min=0).detach()
    assert entropy_loss(stepped, masks).item() < loss.item()


def test_an_all_zero_map_has_the_entropy_of_a_uniform_one():
    """Switching attention off must not lower the loss (the map would then carry no attention at all)."""
    masks = region_masks(1)
    masks[0, 10:20, 10:20] = True
    assert entropy_loss(torch.zeros(1, 84, 84), masks).item() == pytest.approx(1.0, abs=1e-6)


def test_uniform_masks_cover_every_pixel_of_the_frames_with_a_target_only():
    masks = region_masks()
    uniform = training_masks(masks, "uniform")
    assert uniform[:-1].all() and not uniform[-1].any()
    assert uniform.dtype == masks.dtype


def test_camal_loss_on_uniform_masks_is_minus_the_mean_normalised_attention():
    """With every pixel a target there is no outside (beta = 0): the loss is -mean(M / max M)."""
    masks = region_masks()
    cams = torch.rand(8, 7, 7, generator=torch.Generator().manual_seed(2))
    uniform = training_masks(masks, "uniform")
    maps = torch.nn.functional.interpolate(cams[:, None], size=(84, 84), mode="bilinear", align_corners=False)[:, 0]
    normalised = maps / (maps.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-8)
    expected = -normalised[:-1].flatten(1).mean(dim=1).mean()
    assert camal_loss(maps, uniform).item() == pytest.approx(expected.item(), rel=1e-5)
    assert camal_loss_low_res(cams, uniform).item() == pytest.approx(expected.item(), rel=1e-4)
