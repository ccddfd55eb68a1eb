import math

import pytest
import torch

from agents.attention import random_blob_masks
from eval.metrics import (chance_levels, deletion_insertion, dilate_to_cells, occlude, occlusion_drop, pixel_order,
                          pointing_game, relevance_mass, relevance_rank, zero_maps)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def block_masks(batch=3, size=8):
    """Each frame gets a different rectangular target region."""
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 5:8, 0:2] = True
    masks[2, 4, 4] = True
    return masks[:batch]


@pytest.mark.parametrize("device", DEVICES)
def test_map_equal_to_mask_scores_one(device):
    masks = block_masks().to(device)
    maps = masks.float()
    for metric in (relevance_mass, relevance_rank, pointing_game):
        result = metric(maps, masks)
        assert result.device == masks.device
        assert torch.allclose(result, torch.ones(3, device=device)), metric.__name__


def test_map_disjoint_from_mask_scores_zero():
    masks = block_masks()
    maps = (~masks).float() * torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    for metric in (relevance_mass, relevance_rank, pointing_game):
        assert torch.equal(metric(maps, masks), torch.zeros(3)), metric.__name__


def test_bool_and_01_masks_agree():
    masks = block_masks()
    maps = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    for metric in (relevance_mass, relevance_rank, pointing_game):
        assert torch.equal(metric(maps, masks), metric(maps, masks.long())), metric.__name__


def test_uniform_map_mass_equals_chance():
    masks = block_masks()
    chance = chance_levels(masks)
    assert torch.allclose(chance["mass"], torch.tensor([6, 6, 1]) / 64.0)
    assert torch.equal(chance["mass"], chance["rank"])
    assert torch.equal(chance["mass"], chance["pointing"])
    assert torch.allclose(relevance_mass(torch.full(masks.shape, 0.3), masks), chance["mass"])


def test_all_zero_map_is_nan_and_counted():
    masks = block_masks()
    maps = masks.float()
    maps[1] = 0.0
    assert torch.equal(zero_maps(maps), torch.tensor([False, True, False]))
    for metric in (relevance_mass, relevance_rank, pointing_game):
        result = metric(maps, masks)
        assert torch.isnan(result[1]), metric.__name__
        assert not torch.isnan(result[[0, 2]]).any(), metric.__name__


def test_hand_computed_example_with_k3():
    maps = torch.tensor([[[9.0, 1.0, 0.0],
                          [8.0, 2.0, 0.0],
                          [0.0, 7.0, 3.0]]])
    masks = torch.tensor([[[1, 0, 0],
                           [0, 0, 0],
                           [0, 1, 1]]])
    # top-3 of the map: 9 (target), 8 (not), 7 (target) -> 2 of K = 3
    assert relevance_rank(maps, masks).item() == pytest.approx(2 / 3)
    assert relevance_mass(maps, masks).item() == pytest.approx((9 + 7 + 3) / 30)
    assert pointing_game(maps, masks).item() == 1.0


def test_rank_ties_by_pixel_index_on_request():
    maps = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    first_is_target = torch.tensor([[[1, 0], [0, 0]]])
    second_is_target = torch.tensor([[[0, 1], [0, 0]]])
    assert relevance_rank(maps, first_is_target, ties="index").item() == 1.0
    assert relevance_rank(maps, second_is_target, ties="index").item() == 0.0


def test_rank_ties_broken_at_random_with_a_seeded_generator():
    """Two tied maxima, one on the target: the target wins the tie in about half of the frames."""
    maps = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]).repeat(2000, 1, 1)
    second_is_target = torch.tensor([[[0, 1], [0, 0]]]).repeat(2000, 1, 1)
    ranks = relevance_rank(maps, second_is_target, generator=torch.Generator().manual_seed(3))
    assert 0.45 < ranks.mean().item() < 0.55
    again = relevance_rank(maps, second_is_target, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ranks, again)
    assert set(ranks.tolist()) == {0.0, 1.0}


def test_pointing_game_tied_maxima():
    """Two tied maxima, the second on the target: a hit under "any", a miss under the row-major "first"."""
    maps = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    second_is_target = torch.tensor([[[0, 1], [0, 0]]])
    assert pointing_game(maps, second_is_target).item() == 1.0
    assert pointing_game(maps, second_is_target, ties="first").item() == 0.0
    assert pointing_game(maps, torch.tensor([[[0, 0], [1, 0]]])).item() == 0.0  # no maximum on the target


def test_deletion_order_breaks_ties_at_random():
    """A flat map: the "map" order is a seeded random permutation, not the row-major pixel order."""
    maps = torch.zeros(4, 8, 8)
    order = pixel_order(maps, "map", torch.Generator().manual_seed(0))
    assert not torch.equal(order[0], torch.arange(64)) and not torch.equal(order[0], order[1])
    assert torch.equal(order.sort(dim=1).values, torch.arange(64).expand(4, 64))
    assert torch.equal(order, pixel_order(maps, "map", torch.Generator().manual_seed(0)))
    assert torch.equal(pixel_order(maps, "map", ties="index")[0], torch.arange(64))
    # unequal values keep their order: the tie-break only permutes within equal values
    maps[:, 0, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert pixel_order(maps, "map", torch.Generator().manual_seed(1))[:, :4].eq(torch.arange(4)).all()


# --- faithfulness -------------------------------------------------------------------------

SIZE, CHANNELS, BATCH, STEPS = 16, 4, 8, 32
REGION = (slice(3, 7), slice(9, 13))  # 16 of the 256 pixels


class RegionModel(torch.nn.Module):
    """pi(action 0) = sigmoid(10 * mean of region R over all channels - 4); nothing else counts.

    Observations are in [0.5, 1], so the clean input gives pi(0) ~ 0.97, the all-zero baseline
    gives ~0.02, and pi(0) falls only as R's pixels are deleted.
    """

    def forward(self, obs):
        region_mean = obs[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3))
        logits = torch.stack([10.0 * region_mean - 4.0, torch.zeros_like(region_mean)], dim=1)
        return logits.softmax(dim=1)


def faithfulness_setup():
    rng = torch.Generator().manual_seed(0)
    obs = 0.5 + 0.5 * torch.rand(BATCH, CHANNELS, SIZE, SIZE, generator=rng)
    maps = 0.01 * torch.rand(BATCH, SIZE, SIZE, generator=rng)
    maps[:, REGION[0], REGION[1]] += 1.0
    model = RegionModel()
    actions = model(obs).argmax(dim=1)
    assert (actions == 0).all()
    return model, obs, maps, actions


def test_faithful_map_beats_random_order():
    model, obs, maps, actions = faithfulness_setup()
    calls = []

    def prob_fn(batch):
        calls.append(batch.shape[0])
        return model(batch)

    by_map = deletion_insertion(prob_fn, obs, maps, actions, steps=STEPS, order="map")
    assert calls == [2 * BATCH] * (STEPS + 1)  # one batched pass per fraction
    by_random = deletion_insertion(model, obs, maps, actions, steps=STEPS, order="random",
                                   generator=torch.Generator().manual_seed(0))

    for curves in (by_map, by_random):
        assert curves.deletion_curve.shape == (BATCH, STEPS + 1)
        assert curves.insertion_curve.shape == (BATCH, STEPS + 1)
        assert curves.deletion_auc.shape == (BATCH,)
        assert torch.allclose(curves.fractions, torch.linspace(0, 1, STEPS + 1))

    assert (by_random.deletion_auc - by_map.deletion_auc > 0.2).all()
    assert (by_map.insertion_auc - by_random.insertion_auc > 0.2).all()

    # The control passes through many intermediate values instead of jumping at one end
    # (the map-order curves settle within the first 16/256 of pixels).
    low, high = 0.1, 0.9
    for curve in (by_random.deletion_curve, by_random.insertion_curve):
        intermediate = ((curve > low) & (curve < high)).sum(dim=1)
        assert (intermediate >= STEPS // 4).all()
        assert low < curve[:, STEPS // 2].mean() < high
    for curve in (by_map.deletion_curve, by_map.insertion_curve):
        assert (((curve > low) & (curve < high)).sum(dim=1) <= 2).all()


def test_auc_is_trapezoid_of_curve():
    model, obs, maps, actions = faithfulness_setup()
    curves = deletion_insertion(model, obs, maps, actions, steps=4)
    d = curves.deletion_curve
    expected = (d[:, 0] / 2 + d[:, 1] + d[:, 2] + d[:, 3] + d[:, 4] / 2) / 4
    assert torch.allclose(curves.deletion_auc, expected)


def test_curve_endpoints():
    model, obs, maps, actions = faithfulness_setup()
    clean = model(obs)[:, 0]
    baseline = model(torch.zeros_like(obs))[:, 0]
    for order in ("map", "random"):
        curves = deletion_insertion(model, obs, maps, actions, steps=STEPS, order=order)
        assert torch.allclose(curves.deletion_curve[:, 0], clean)
        assert torch.allclose(curves.insertion_curve[:, -1], clean)
        assert torch.allclose(curves.deletion_curve[:, -1], baseline)
        assert torch.allclose(curves.insertion_curve[:, 0], baseline)
        assert math.isclose(baseline[0].item(), 1 / (1 + math.exp(4.0)), rel_tol=1e-5)


def test_random_order_is_reproducible_with_generator():
    model, obs, maps, actions = faithfulness_setup()
    first, second = (deletion_insertion(model, obs, maps, actions, steps=8, order="random",
                                        generator=torch.Generator().manual_seed(7))
                     for _ in range(2))
    assert torch.equal(first.deletion_curve, second.deletion_curve)
    assert torch.equal(first.insertion_curve, second.insertion_curve)


def test_occlusion_changes_only_the_mask_region_and_the_random_region_only_its_own():
    model, obs, _, actions = faithfulness_setup()
    region = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.bool)
    region[:, REGION[0], REGION[1]] = True
    occluded = occlude(obs, region)
    changed = (occluded != obs).any(dim=1)  # over the stacked frames
    assert torch.equal(changed, region)  # obs > 0 everywhere, so every region pixel changes
    assert (occluded[region.unsqueeze(1).expand_as(obs)] == 0).all()  # the deletion baseline, in every frame
    blob = random_blob_masks(region, torch.Generator().manual_seed(0))
    assert torch.equal(blob.flatten(1).sum(1), region.flatten(1).sum(1))  # equal area
    assert torch.equal((occlude(obs, blob) != obs).any(dim=1), blob.bool())
    # pi(a*|x) depends only on the region: occluding it drops pi, a disjoint blob of equal area does not
    drop = occlusion_drop(model, obs, region, actions)
    assert (drop > 0.9).all()
    elsewhere = torch.zeros_like(region)
    elsewhere[:, 10:14, 0:4] = True
    assert torch.allclose(occlusion_drop(model, obs, elsewhere, actions), torch.zeros(BATCH))


def test_the_dilated_target_grows_by_half_a_map_cell_and_occluding_it_changes_only_that_region():
    masks = torch.zeros(2, 84, 84, dtype=torch.bool)
    masks[0, 40, 40] = True  # one pixel -> a 13 x 13 square (cells of 12 pixels: half a cell, 6, each side)
    masks[1, 0:3, 80:84] = True  # at the border the square is cut off by the frame
    dilated = dilate_to_cells(masks, (7, 7))
    assert dilated.dtype == masks.dtype and (dilated | ~masks).all()  # contains the mask
    rows, cols = torch.nonzero(dilated[0], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (34, 46, 34, 46) and len(rows) == 13 * 13
    assert dilated[1].sum() == (3 + 6) * (4 + 6)
    obs = torch.rand(2, 4, 84, 84) + 0.1
    changed = (occlude(obs, dilated) != obs).any(dim=1)
    assert torch.equal(changed, dilated)
