"""The agent's attention, its CAMAL loss and a real (short) training run."""

import json
import math

import pytest
import torch

from agents.attention import camal_loss, grad_cam, normalise_maps, relevance_mass
from agents.methods import DEFAULT_ATTENTION_COEF
from agents.network import Agent
from agents.ppo_args import Args, create_run_dir, set_runtime_fields
from conftest import run_trainer, scalars, train

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


@pytest.mark.slow  # 30 second-order steps: ~10 s of CPU
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


@pytest.mark.slow
def test_attn_loss_none_and_zero_coef_are_identical(tmp_path):
    common = [*TINY, "--env", "basic", "--seed", "3", "--total-timesteps", "256", "--no-cuda"]
    vanilla = train(tmp_path / "runs", *common, "--attn-loss", "none")
    zero = train(tmp_path / "runs", *common, "--attn-loss", "camal", "--camal-coef", "0")
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl"):
        assert scalars(vanilla, tag) == scalars(zero, tag), tag
    model_a = torch.load(vanilla / "checkpoint.pt", weights_only=False)["model"]
    model_b = torch.load(zero / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert scalars(zero, "losses/camal_loss")  # the loss was computed, only weighted by 0


@pytest.mark.slow
def test_non_finite_loss_stops_with_one_line_naming_update_and_term(tmp_path):
    """A learning rate of 1e30 is finite, but its first step blows the weights up."""
    done = run_trainer("--runs-dir", str(tmp_path / "runs"), "--no-cuda", "--env", "basic", "--total-timesteps", "128",
                       "--learning-rate", "1e30", *TINY)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: update 1: non-finite policy_loss = nan"), last
    assert "no checkpoint had been written" in last
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "checkpoint.pt").exists()


@pytest.mark.slow
def test_checkpoint_stays_the_last_finite_one(tmp_path):
    """One minibatch per update: update 1 ends with finite (huge) weights and saves them; update 2 cannot act."""
    flags = ["--runs-dir", str(tmp_path / "runs"), "--no-cuda", "--env", "basic", "--total-timesteps", "256",
             "--learning-rate", "1e30", "--save-every", "1", "--num-envs", "2", "--num-steps", "64",
             "--num-minibatches", "1", "--update-epochs", "1"]
    done = run_trainer(*flags)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: update 2: non-finite policy logits"), last
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"{run_dir / 'checkpoint.pt'} holds the last finite weights" in last
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["iteration"] == 1
    assert all(torch.isfinite(weights).all() for weights in checkpoint["model"].values())


@pytest.mark.slow
def test_warns_of_a_partial_batch_and_of_targets_never_seen(tmp_path):
    done = run_trainer("--runs-dir", str(tmp_path / "runs"), "--no-cuda", "--env", "basic", "--targets", "Medikit",
                       "--total-timesteps", "200", *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert any("--total-timesteps 200 is not a multiple of the batch" in w and "128 steps will run" in w
               for w in warnings), warnings
    assert any("no frame of the first 1 updates had a target" in w and "Medikit" in w for w in warnings), warnings


def test_two_launches_in_the_same_second_get_two_run_folders(tmp_path):
    args = Args(runs_dir=str(tmp_path))
    first, second = create_run_dir(args), create_run_dir(args)
    assert first != second and first.is_dir() and second.is_dir()
    assert (first / "config.json").is_file() and (second / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("flags, method, loss_tag", [
    (["--attn-loss", "rrr"], "rrr", "losses/rrr_loss"),
    (["--attn-loss", "camal", "--mask-source", "shuffled"], "camal-shuffled", "losses/camal_loss"),
    (["--attn-loss", "camal", "--mask-source", "uniform"], "camal-uniform", "losses/camal_loss"),
    (["--attn-loss", "entropy"], "entropy", "losses/entropy_loss"),
])
def test_control_runs_are_labelled_for_aggregation(tmp_path, flags, method, loss_tag):
    run_dir = train(tmp_path / "runs", *TINY, "--env", "basic", "--total-timesteps", "128", "--no-cuda", *flags)
    assert json.loads((run_dir / "config.json").read_text())["method"] == method
    assert run_dir.name.startswith(f"basic__{method}__1__")
    values = [value for _, value in scalars(run_dir, loss_tag)]
    assert values and all(math.isfinite(v) for v in values)


def test_attention_coefficient_defaults_per_loss_and_an_explicit_value_wins():
    """Without --camal-coef each loss gets its own tuned lambda (RRR's penalty is far larger than CAMAL's);
    the resolved value is what config.json records."""
    resolved = {}
    for loss in ("none", "camal", "rrr", "entropy"):
        args = Args(attn_loss=loss)
        set_runtime_fields(args)
        resolved[loss] = args.camal_coef
    assert resolved == DEFAULT_ATTENTION_COEF and resolved["rrr"] < resolved["camal"]
    args = Args(attn_loss="rrr", camal_coef=0.5)
    set_runtime_fields(args)
    assert args.camal_coef == 0.5


def test_bf16_keeps_the_outputs_fp32_and_close_to_the_fp32_network():
    torch.manual_seed(0)
    agent = Agent(num_actions=3)
    pixels, _, actions = random_batch(batch=32)
    exact = agent.logits_value_features_hidden(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = agent.logits_value_features_hidden(pixels)
    assert all(t.dtype == torch.float32 for t in mixed)  # losses and Grad-CAM are computed in fp32
    for a, b in zip(exact, mixed):
        assert not torch.equal(a, b)  # the layers did run in bfloat16
        torch.testing.assert_close(b, a, rtol=0.05, atol=0.05 * a.abs().max().item())
    maps_exact = agent.grad_cam(exact[2], exact[3], actions)
    maps_mixed = agent.grad_cam(mixed[2], mixed[3], actions)
    # near-zero hidden units may switch their ReLU gate in bfloat16, so the maps move more than the logits
    relative_error = (maps_mixed - maps_exact).norm() / maps_exact.norm()
    assert relative_error < 0.1, relative_error


@pytest.mark.slow
@pytest.mark.parametrize("attn_loss", ["camal", "rrr"])
def test_bf16_run_trains_with_finite_losses(tmp_path, attn_loss):
    run_dir = train(tmp_path / "runs", *TINY, "--env", "basic", "--total-timesteps", "256", "--no-cuda", "--bf16",
                    "--attn-loss", attn_loss)
    assert json.loads((run_dir / "config.json").read_text())["bf16"] is True
    for tag in ("losses/policy_loss", "losses/value_loss", f"losses/{attn_loss}_loss"):
        values = [value for _, value in scalars(run_dir, tag)]
        assert values and all(math.isfinite(v) for v in values), tag


@pytest.mark.slow
def test_env_groups_and_acting_threads_change_nothing_learned(tmp_path):
    """Acting on the envs in two groups with one thread (the default) trains exactly what acting on all
    envs at once with torch's default threads (the trainer before --env-groups) trains: same seed, same
    episodes and, within float tolerance (other batch sizes and threads sum in another order), losses."""
    common = [*TINY, "--env", "basic", "--seed", "5", "--total-timesteps", "512", "--no-cuda", "--attn-loss", "none",
              "--num-envs", "4", "--num-steps", "64", "--num-minibatches", "2", "--update-epochs", "1"]
    together = train(tmp_path / "runs", *common, "--env-groups", "1", "--acting-threads", "None")
    grouped = train(tmp_path / "runs", *common, "--env-groups", "2", "--acting-threads", "1")
    assert scalars(together, "charts/episodic_return"), "the runs should finish episodes"
    for tag in ("charts/episodic_return", "losses/policy_loss", "losses/value_loss", "losses/entropy"):
        (steps_a, values_a), (steps_b, values_b) = zip(*scalars(together, tag)), zip(*scalars(grouped, tag))
        assert steps_b == steps_a and values_b == pytest.approx(values_a, rel=1e-4, abs=1e-6), tag
