"""The agent's network: CleanRL's Nature CNN, with the closed-form Grad-CAM of its policy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.distributions.categorical import Categorical

from agents.attention import linear_head_grad_cam


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """Nature CNN; ``conv`` ends in the last convolutional layer, whose output Grad-CAM explains."""

    MAP_SIZE = (7, 7)  # (h, w) of that output for 84x84 frames: the resolution of the Grad-CAM maps

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
        self.head = nn.Sequential(
            nn.Flatten(), layer_init(nn.Linear(64 * self.MAP_SIZE[0] * self.MAP_SIZE[1], 512)), nn.ReLU()
        )
        self.actor = layer_init(nn.Linear(512, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)
        self.to(memory_format=torch.channels_last)  # oneDNN's and cuDNN's fast layout: 1.5x faster updates here

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Output A of the last conv layer (after its ReLU), for uint8 or float pixels in [0, 255]."""
        return self.conv((pixels.float() / 255.0).contiguous(memory_format=torch.channels_last))

    def get_value(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.critic(self.head(self.features(pixels))).float()  # fp32 out of a --bf16 autocast

    def get_action_and_value(self, pixels: torch.Tensor, action: torch.Tensor | None = None):
        logits, value, _ = self.logits_value_features(pixels)
        if not torch.isfinite(logits).all():  # weights that the last update blew up: no policy to act with
            raise FloatingPointError(f"policy logits = {logits[~torch.isfinite(logits)][0].item()} while acting")
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
        # fp32 out of a bfloat16 autocast (--bf16): the losses, the policy and Grad-CAM are computed in fp32
        return self.actor(hidden).float(), self.critic(hidden).float(), features.float(), hidden.float()

    def grad_cam(self, features: torch.Tensor, hidden: torch.Tensor, actions: torch.Tensor, size=None) -> torch.Tensor:
        """Differentiable Grad-CAM of ``actions`` in closed form (no double backward), upsampled to ``size``
        (None: at A's 7x7, for ``camal_loss_low_res``)."""
        return linear_head_grad_cam(features, hidden, actions, self.head[1].weight, self.actor.weight, size)
