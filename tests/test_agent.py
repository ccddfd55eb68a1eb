"""The agent's attention, its CAMAL loss and a real (short) training run."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.attention import camal_loss, grad_cam, normalise_maps, relevance_mass
from agents.ppo_camal import Agent, Args, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-envs", "2", "--num-steps", "64", "--num-minibatches", "2", "--update-epochs", "1", "--image-every", "1"]


def hooked_grad_cam(agent: Agent, pixels: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Textbook Grad-CAM with hooks on the last conv block, independent of agents.attention."""
    stored = {}
    last_relu = agent.conv[-1]
    forward = last_relu.register_forward_hook(lambda m, i, o: stored.update(activation=o))
    backward = last_relu.register_full_backward_hook(lambda m, gi, go: stored.update(gradient=go[0]))
    try:
        logits, _, _ = agent.logits_value_features(pixels)
        agent.zero_grad()
        logits[torch.arange(len(actions)), actions].sum().backward()
    finally:
        forward.remove()
        backward.remove()
    weights = stored["gradient"].mean(dim=(2, 3))
    maps = []
    for b in range(len(actions)):
        cam = torch.zeros_like(stored["activation"][b, 0])
        for k in range(weights.shape[1]):
            cam += weights[b, k] * stored["activation"][b, k]
        cam = torch.clamp(cam, min=0)
        maps.append(torch.nn.functional.interpolate(cam[None, None], size=(84, 84), mode="bilinear")[0, 0])
    return torch.stack(maps).detach()


def random_batch(batch=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 4, 84, 84), generator=generator, dtype=torch.uint8)
    masks = torch.zeros(batch, 84, 84, dtype=torch.bool)
    masks[:, 30:50, 10:30] = True
    actions = torch.randint(0, 3, (batch,), generator=generator)
    return pixels, masks, actions


def test_grad_cam_equals_hook_computation():
    torch.manual_seed(0)
    agent = Agent(num_actions=3)
    pixels, _, actions = random_batch()
    logits, _, features = agent.logits_value_features(pixels)
    ours = grad_cam(features, logits, actions, (84, 84), create_graph=False)
    reference = hooked_grad_cam(agent, pixels, actions)
    assert ours.shape == (6, 84, 84)
    assert reference.abs().max() > 0
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_camal_loss_alone_raises_attention_on_mask():
    torch.manual_seed(0)
    agent = Agent(num_actions=3)
    pixels, masks, actions = random_batch(batch=16)
    # a small step size: larger ones drive most maps to all-zero (loss 0), see README "attention collapse"
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-5)

    def mass_and_loss():
        logits, _, features = agent.logits_value_features(pixels)
        maps = grad_cam(features, logits, actions, (84, 84), create_graph=True)
        return torch.nanmean(relevance_mass(maps.detach(), masks)).item(), camal_loss(maps, masks)

    mass_before, loss_before = mass_and_loss()
    for _ in range(30):
        _, loss = mass_and_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mass_after, loss_after = mass_and_loss()
    chance = masks.float().mean().item()
    assert loss_after.item() < loss_before.item() - 0.05
    assert mass_after > max(mass_before, chance) + 0.2


def test_empty_mask_and_zero_map_give_finite_loss_and_gradients():
    torch.manual_seed(0)
    agent = Agent(num_actions=3)
    pixels, masks, actions = random_batch()
    logits, _, features = agent.logits_value_features(pixels)
    maps = grad_cam(features, logits, actions, (84, 84), create_graph=True)
    loss = camal_loss(maps, torch.zeros_like(masks))
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in agent.parameters() if p.grad is not None)

    zero_maps = torch.zeros(6, 84, 84, requires_grad=True)
    loss = camal_loss(zero_maps, masks)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert torch.isfinite(zero_maps.grad).all()
    assert normalise_maps(zero_maps).abs().max() == 0


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def train(tmp_path: Path, *extra: str) -> Path:
    runs = tmp_path / "runs"
    before = set(runs.glob("*")) if runs.exists() else set()
    cmd = [sys.executable, str(ROOT / "agents/ppo_camal.py"), "--runs-dir", str(runs), *TINY, *extra]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    (run_dir,) = set(runs.glob("*")) - before
    return run_dir


def test_attn_loss_none_and_zero_coef_are_identical(tmp_path):
    common = ["--env", "basic", "--seed", "3", "--total-timesteps", "256", "--no-cuda"]
    vanilla = train(tmp_path, *common, "--attn-loss", "none")
    zero = train(tmp_path, *common, "--attn-loss", "camal", "--camal-coef", "0")
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl"):
        assert scalars(vanilla, tag) == scalars(zero, tag), tag
    model_a = torch.load(vanilla / "checkpoint.pt", weights_only=False)["model"]
    model_b = torch.load(zero / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert scalars(zero, "losses/camal_loss")  # the loss was computed, only weighted by 0


def test_training_writes_run_folder_and_resumes_after_sigterm(tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "agents/ppo_camal.py"), "--env", "basic", "--runs-dir", str(runs),
           "--total-timesteps", "1280", "--save-every", "1", "--no-cuda", *TINY]
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not list(runs.glob("*/checkpoint.pt")) and time.time() < deadline:
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    (run_dir,) = runs.glob("*")
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["env"], config["method"], config["seed"]) == ("basic", "camal", 1)
    stopped = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert 1 <= stopped["iteration"] < 10, stderr.decode()[-2000:]
    assert stopped["global_step"] == stopped["iteration"] * 128
    assert list(run_dir.glob("events.out.tfevents.*"))

    main(Args(resume=str(run_dir)))
    finished = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert (finished["iteration"], finished["global_step"]) == (10, 1280)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) >= 1
    losses = scalars(run_dir, "losses/policy_loss")
    steps = [s for s, _ in losses]
    assert steps == sorted(set(steps)) and steps[-1] == 1280  # one continuous curve, no duplicates
    assert scalars(run_dir, "attention/relevance_mass") and scalars(run_dir, "attention/mask_fraction")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"env": "doom3"}, "unknown scenario 'doom3'; valid: basic"),
        ({"camal_coef": -1.0}, "--camal-coef must be >= 0"),
        ({"num_minibatches": 3}, "does not divide the batch"),
        ({"targets": "Cacodemon,Unicorn"}, "unknown target 'Unicorn'; valid:"),
        ({"resume": "."}, "not a run folder"),
    ],
)
def test_bad_arguments_exit_with_one_line_error(overrides, message, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(Args(runs_dir=str(tmp_path), **overrides))
    text = str(exit_info.value.code)
    assert message in text and "\n" not in text
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("flags, method, loss_tag", [
    (["--attn-loss", "rrr"], "rrr", "losses/rrr_loss"),
    (["--attn-loss", "camal", "--mask-source", "shuffled"], "camal-shuffled", "losses/camal_loss"),
])
def test_control_runs_are_labelled_for_aggregation(tmp_path, flags, method, loss_tag):
    run_dir = train(tmp_path, "--env", "basic", "--total-timesteps", "128", "--no-cuda", *flags)
    assert json.loads((run_dir / "config.json").read_text())["method"] == method
    assert run_dir.name.startswith(f"basic__{method}__1__")
    values = [value for _, value in scalars(run_dir, loss_tag)]
    assert values and all(math.isfinite(v) for v in values)
