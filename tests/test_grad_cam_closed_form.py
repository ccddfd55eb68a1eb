"""The closed-form Grad-CAM of the agent's linear head equals the autograd one, map and gradients."""

import pytest
import torch

from agents.attention import camal_loss, grad_cam, linear_head_grad_cam
from agents.ppo_camal import Agent


def agent_and_batch(num_actions: int, seed: int, batch: int = 12):
    """An agent whose head weights are scaled up (at init the actor's are ~0.01) and a batch of frames."""
    torch.manual_seed(seed)
    agent = Agent(num_actions)
    with torch.no_grad():
        agent.actor.weight.mul_(100.0)
    pixels = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8)
    actions = torch.randint(0, num_actions, (batch,))
    masks = torch.zeros(batch, 84, 84, dtype=torch.bool)
    masks[: batch - 2, 20:45, 30:60] = True  # the last two frames have no target
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


@pytest.mark.parametrize("num_actions, seed", [(3, 2), (8, 3)])
def test_closed_form_gives_the_same_parameter_gradients_through_the_camal_loss(num_actions, seed):
    agent, pixels, actions, masks = agent_and_batch(num_actions, seed)
    reference, closed = both_maps(agent, pixels, actions)
    names = [name for name, _ in agent.named_parameters()]
    params = list(agent.parameters())
    # a parameter the map does not depend on (the critic, the biases of the head) gets a zero gradient
    reference_grads = torch.autograd.grad(camal_loss(reference, masks), params, retain_graph=True,
                                          allow_unused=True, materialize_grads=True)
    closed_grads = torch.autograd.grad(camal_loss(closed, masks), params, allow_unused=True, materialize_grads=True)
    nonzero = set()
    for name, ref, ours in zip(names, reference_grads, closed_grads):
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item() + 1e-12,
                                   msg=lambda text, name=name: f"{name}: {text}")
        if ref.abs().max() > 0:
            nonzero.add(name)
    # the loss trains the conv layers, the fc layer and the actor, as the double backward does
    assert {"conv.0.weight", "conv.4.weight", "head.1.weight", "actor.weight"} <= nonzero
