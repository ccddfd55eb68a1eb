"""The closed-form Grad-CAM of the agent's linear head and the CAMAL loss at the map's own resolution equal
the autograd Grad-CAM and the loss on the upsampled map: values and gradients."""

import pytest
import torch

from agents.attention import (camal_loss, camal_loss_low_res, grad_cam, linear_head_grad_cam, peak_samples,
                              project_masks, upsampling_matrix)
from agents.network import Agent


def agent_and_batch(num_actions: int, seed: int, batch: int = 12):
    """An agent whose head weights are scaled up (at init the actor's are ~0.01) and a batch of frames."""
    torch.manual_seed(seed)
    agent = Agent(num_actions)
    with torch.no_grad():
        agent.actor.weight.mul_(100.0)
    pixels = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8)
    actions = torch.randint(0, num_actions, (batch,))
    masks = torch.zeros(batch, 84, 84, dtype=torch.bool)
    for b in range(batch - 2):  # a box of its own in each frame; the last two frames have no target
        top, left = torch.randint(0, 60, (2,)).tolist()
        height, width = torch.randint(3, 25, (2,)).tolist()
        masks[b, top : top + height, left : left + width] = True
    return agent, pixels, actions, masks


def both_maps(agent: Agent, pixels: torch.Tensor, actions: torch.Tensor):
    logits, _, features, hidden = agent.logits_value_features_hidden(pixels)
    reference = grad_cam(features, logits, actions, (84, 84), create_graph=True)
    closed = linear_head_grad_cam(features, hidden, actions, agent.head[1].weight, agent.actor.weight, (84, 84))
    return reference, closed


@pytest.mark.parametrize("num_actions, seed", [(3, 0), (8, 1)])
def test_closed_form_map_equals_autograd_grad_cam(num_actions, seed):
    agent, pixels, actions, _ = agent_and_batch(num_actions, seed)
    reference, closed = both_maps(agent, pixels, actions)
    assert closed.shape == reference.shape == (12, 84, 84)
    assert (reference.flatten(1).amax(dim=1) > 0).sum() >= 3  # non-trivial maps are compared
    torch.testing.assert_close(closed, reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())
    torch.testing.assert_close(agent.grad_cam(*agent.logits_value_features_hidden(pixels)[2:], actions, (84, 84)),
                               closed)


def closed_form_loss(agent, features, hidden, actions, masks, low_res: bool):
    if low_res:  # as the trainer does it
        return camal_loss_low_res(agent.grad_cam(features, hidden, actions), masks)
    return camal_loss(agent.grad_cam(features, hidden, actions, (84, 84)), masks)


@pytest.mark.parametrize("low_res", [False, True])
@pytest.mark.parametrize("num_actions, seed", [(3, 2), (8, 3)])
def test_closed_form_gives_the_same_camal_loss_and_parameter_gradients(num_actions, seed, low_res):
    agent, pixels, actions, masks = agent_and_batch(num_actions, seed)
    logits, _, features, hidden = agent.logits_value_features_hidden(pixels)
    reference = camal_loss(grad_cam(features, logits, actions, (84, 84), create_graph=True), masks)
    ours = closed_form_loss(agent, features, hidden, actions, masks, low_res)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    names = [name for name, _ in agent.named_parameters()]
    params = list(agent.parameters())
    # a parameter the map does not depend on (the critic, the biases of the head) gets a zero gradient
    reference_grads = torch.autograd.grad(reference, params, retain_graph=True, allow_unused=True,
                                          materialize_grads=True)
    closed_grads = torch.autograd.grad(ours, params, allow_unused=True, materialize_grads=True)
    nonzero = set()
    for name, ref, grad in zip(names, reference_grads, closed_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item() + 1e-12,
                                   msg=lambda text, name=name: f"{name}: {text}")
        if ref.abs().max() > 0:
            nonzero.add(name)
    # the loss trains the conv layers, the fc layer and the actor, as the double backward does
    assert {"conv.0.weight", "conv.4.weight", "head.1.weight", "actor.weight"} <= nonzero


def test_a_rollouts_masks_projected_once_give_each_minibatch_its_own_loss_and_gradient():
    """The trainer projects a rollout's masks once (project_masks) and selects each minibatch's rows of it."""
    agent, pixels, actions, masks = agent_and_batch(3, 5)
    _, _, features, hidden = agent.logits_value_features_hidden(pixels)
    cams = agent.grad_cam(features, hidden, actions)
    projected = project_masks(masks, Agent.MAP_SIZE)
    for minibatch in (torch.tensor([5, 0, 7, 3, 11, 2]), torch.tensor([10, 1, 11]), torch.tensor([10, 11])):
        ours = camal_loss_low_res(cams[minibatch], projected[minibatch])
        upsampled = agent.grad_cam(features[minibatch], hidden[minibatch], actions[minibatch], (84, 84))
        reference = camal_loss(upsampled, masks[minibatch])  # frames 10 and 11 have no target: left out
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
        ours_grad, = torch.autograd.grad(ours, agent.actor.weight, retain_graph=True, materialize_grads=True)
        reference_grad, = torch.autograd.grad(reference, agent.actor.weight, retain_graph=True,
                                              materialize_grads=True)
        torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-3, atol=1e-4 * reference_grad.abs().max() + 1e-12)
    assert camal_loss_low_res(cams[10:], projected[10:]).item() == 0.0  # no target in the minibatch


def test_low_res_loss_without_targets_is_zero_with_finite_gradients():
    agent, pixels, actions, masks = agent_and_batch(3, 4)
    _, _, features, hidden = agent.logits_value_features_hidden(pixels)
    loss = camal_loss_low_res(agent.grad_cam(features, hidden, actions), torch.zeros_like(masks))
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in agent.parameters() if p.grad is not None)


@pytest.mark.parametrize("source, target", [(7, 84), (5, 60), (7, 83), (3, 10), (7, 7)])
def test_a_bilinear_upsampling_peaks_on_its_candidate_pixels(source, target):
    """The maximum of R M C^T over all pixels equals its maximum over peak_samples' rows and columns."""
    maps = torch.randn(500, source, source, generator=torch.Generator().manual_seed(source * target)).relu()
    matrix = upsampling_matrix(source, target, maps)
    candidates = peak_samples(source, target, maps)
    assert len(candidates) <= min(target, 2 * source)
    full = (matrix @ maps @ matrix.T).flatten(1).amax(dim=1)
    on_candidates = (matrix[candidates] @ maps @ matrix[candidates].T).flatten(1).amax(dim=1)
    torch.testing.assert_close(on_candidates, full, rtol=0, atol=1e-6)
