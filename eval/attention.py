"""Attention metrics of a trained agent (docs/method.md s.5): alignment and faithfulness.

    python eval/attention.py runs/basic__camal__1__1700000000                 # 10 episodes, sampled actions
    python eval/attention.py runs/RUN --record-frames frames_basic.npz        # also keep the frames
    python eval/attention.py runs/OTHER_RUN --frames frames_basic.npz        # same inputs, another agent

The agent plays N episodes (seeds seed, seed+1, ...), sampling its actions as in training (--greedy
takes argmax pi instead). On every frame whose target mask is non-empty it computes the Grad-CAM map M
of a* = argmax pi(.|x) on the clean input, then relevance mass / rank / pointing game (each beside its
chance level) and deletion / insertion AUCs of pi(a*|x) with the map's pixel order and with a random
order (the control). Writes attention_eval.json, deletion_insertion.png, attention_grid.png and
attention_episode.gif into the run folder (or --out).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NamedTuple

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
import torch
import tyro
from tqdm import tqdm

from agents.attention import grad_cam, has_target, normalise_maps, random_blob_masks
from agents.checks import SEED_MAX, check_writable_dir
from agents.network import Agent
from agents.run_folder import ALIGNMENT, CHECKPOINT, CONFIG
from envs import check_scenario, make_env
from masks import mask_outline
from eval.metrics import (chance_levels, deletion_insertion, dilate_to_cells, occlusion_drop, pointing_game,
                          relevance_mass, relevance_rank, zero_maps)

RESULT_FILE = "attention_eval.json"
CURVES_PLOT = "deletion_insertion.png"
GRID_PLOT = "attention_grid.png"
EPISODE_GIF = "attention_episode.gif"
FRAME_SHAPE = (4, 84, 84)
GRID_SIZE = 4  # GRID_SIZE x GRID_SIZE frames in attention_grid.png
GIF_SCALE = 3  # each 84x84 panel is shown at 252x252
GIF_MAX_FRAMES = 150  # ~17 s of play; longer episodes are cut (a GIF frame of 3 panels is 30-65 kB)
GIF_FRAME_MS = 114  # frame skip 4 at 35 tics/s: one agent step every 4/35 s, so the GIF plays in real time


@dataclass
class Args:
    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR_OR_CHECKPOINT")]
    """run folder (holds config.json and checkpoint.pt) or a checkpoint file inside one"""
    episodes: int = 10
    """number of episodes to roll out (ignored with --frames)"""
    seed: int = 0
    """episode i is reset with seed + i; also seeds action sampling and the random pixel order"""
    greedy: bool = False
    """act with argmax pi instead of sampling from pi (sampling, the default, is how the agent trained)"""
    record_frames: str | None = None
    """save the evaluated frames (pixels, masks, env, ...) to this .npz file"""
    frames: str | None = None
    """evaluate on the frames in this .npz file (from --record-frames) instead of rolling out"""
    out: str | None = None
    """output folder for the JSON and the pictures (None: the run folder)"""
    video: bool = True
    """write attention_episode.gif (game frame | attention | mask outline) of the first episode"""
    deletion_steps: int = 20
    """number of steps of the deletion / insertion curves (fractions 0, 1/n, ..., 1)"""
    batch_size: int = 256
    """frames evaluated at a time"""
    cuda: bool = True
    """use CUDA when it is available (as the trainer does); the metrics are the same up to float rounding"""
    ties: str = "random"
    """tied map values: 'random' (rank and deletion/insertion order ties at random, seeded by --seed; pointing
    game hits if any tied maximum is on the target) or 'index' (row-major: top rows first; first maximum)"""


class EvalError(Exception):
    """A problem with the user's input: reported as one line, without a traceback."""


class Frames(NamedTuple):
    pixels: np.ndarray   # uint8 (N, 4, 84, 84)
    masks: np.ndarray    # uint8 (N, 84, 84), mask of the newest frame
    actions: np.ndarray  # int64 (N,) action taken in the rollout (-1 when unknown)
    episode: np.ndarray  # int64 (N,) index of the episode each frame belongs to (-1 when unknown)


class LoadedAgent(NamedTuple):
    agent: Agent
    run_dir: Path
    config: dict
    num_actions: int
    checkpoint_step: int | None


# ---------------------------------------------------------------- loading


def load_agent(path: str, device: torch.device) -> LoadedAgent:
    """The agent of a run folder or of a checkpoint file inside one, in eval mode."""
    target = Path(path)
    if not target.exists():
        raise EvalError(f"{path}: no such file or folder")
    checkpoint = target if target.is_file() else target / CHECKPOINT
    run_dir = checkpoint.parent
    if not checkpoint.is_file():
        raise EvalError(f"{path}: no {CHECKPOINT} in this folder (is it a run folder?)")
    config_file = run_dir / CONFIG
    if not config_file.is_file():
        raise EvalError(f"{run_dir}: no {CONFIG} beside the checkpoint, so the scenario is unknown")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise EvalError(f"{config_file}: not valid JSON ({error})") from None
    if "env" not in config:
        raise EvalError(f"{config_file}: has no 'env' (scenario) entry")
    try:
        check_scenario(config["env"])
    except ValueError as error:
        raise EvalError(f"{config_file}: {error}") from None
    try:
        # the trainer's checkpoints hold RNG states (numpy arrays), so they need the full unpickler
        state = torch.load(checkpoint, map_location=device, weights_only=False)
    except Exception as error:  # torch raises several unrelated types for a damaged file
        raise EvalError(f"{checkpoint}: not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "num_actions" not in state:
        raise EvalError(f"{checkpoint}: not a checkpoint of agents/ppo_camal.py (needs 'model' and 'num_actions')")
    agent = Agent(int(state["num_actions"])).to(device)
    try:
        agent.load_state_dict(state["model"])
    except RuntimeError:
        raise EvalError(f"{checkpoint}: weights do not fit an agent with {state['num_actions']} actions") from None
    agent.eval()
    return LoadedAgent(agent, run_dir, config, int(state["num_actions"]), state.get("global_step"))


def load_frames(path: str, env_name: str, num_actions: int) -> tuple[Frames, dict]:
    """Frames recorded by --record-frames, checked against the agent's scenario and action count."""
    file = Path(path)
    if not file.is_file():
        raise EvalError(f"--frames {path}: no such file")
    try:
        with np.load(file, allow_pickle=False) as data:
            contents = {key: data[key] for key in data.files}
    except Exception as error:  # not a zip, damaged, pickled objects ...
        raise EvalError(f"--frames {path}: not a readable .npz file ({type(error).__name__})") from None
    missing = [key for key in ("pixels", "masks", "env") if key not in contents]
    if missing:
        raise EvalError(f"--frames {path}: missing {', '.join(missing)} (expected a file from --record-frames)")
    pixels, masks = contents["pixels"], contents["masks"]
    if pixels.ndim != 4 or pixels.shape[1:] != FRAME_SHAPE or pixels.dtype != np.uint8 or len(pixels) == 0:
        raise EvalError(f"--frames {path}: pixels must be uint8 (N, 4, 84, 84) with N > 0, "
                        f"got {pixels.dtype} {pixels.shape}")
    if masks.shape != (len(pixels),) + FRAME_SHAPE[1:]:
        raise EvalError(f"--frames {path}: masks must be (N, 84, 84) with N = {len(pixels)}, got {masks.shape}")
    file_env = str(contents["env"])
    if file_env != env_name:
        raise EvalError(f"--frames {path}: frames of scenario '{file_env}', but the agent plays '{env_name}'")
    if "num_actions" in contents and int(contents["num_actions"]) != num_actions:
        raise EvalError(f"--frames {path}: recorded with {int(contents['num_actions'])} actions, "
                        f"but the agent has {num_actions}")
    unknown = np.full(len(pixels), -1, dtype=np.int64)
    frames = Frames(pixels, (masks != 0).astype(np.uint8),
                    contents.get("actions", unknown).astype(np.int64), contents.get("episode", unknown).astype(np.int64))
    source = {"frames_file": str(file), "frames_targets": str(contents["targets"]) if "targets" in contents else None}
    return frames, source


def save_frames(path: str, frames: Frames, env_name: str, targets: str | None, num_actions: int) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(file, pixels=frames.pixels, masks=frames.masks, actions=frames.actions,
                        episode=frames.episode, env=np.array(env_name), targets=np.array(targets or ""),
                        num_actions=np.array(num_actions))


# ---------------------------------------------------------------- rollout


def choose_action(agent: Agent, pixels: np.ndarray, greedy: bool, generator: torch.Generator,
                  device: torch.device) -> int:
    with torch.no_grad():
        logits, _, _ = agent.logits_value_features(torch.as_tensor(pixels, device=device).unsqueeze(0))
    if greedy:
        return int(logits.argmax(dim=1).item())
    probs = torch.softmax(logits, dim=1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator).item())


def roll_out(loaded: LoadedAgent, episodes: int, seed: int, greedy: bool,
             device: torch.device) -> tuple[Frames, list[float]]:
    """Frames seen before each action (the terminal all-zero observation is never acted on)."""
    env = make_env(loaded.config["env"], targets=loaded.config.get("targets"),
                   reward_transform=loaded.config.get("reward_transform", "scale"),
                   reward_scale=loaded.config.get("reward_scale"))
    try:
        if env.action_space.n != loaded.num_actions:
            raise EvalError(f"the checkpoint has {loaded.num_actions} actions, but scenario "
                            f"'{loaded.config['env']}' has {env.action_space.n}")
        generator = torch.Generator().manual_seed(seed)
        pixels, masks, actions, episode_index, returns = [], [], [], [], []
        progress = tqdm(range(episodes), desc="episodes", unit="ep", dynamic_ncols=True)
        for episode in progress:
            obs, _ = env.reset(seed=seed + episode)
            done = False
            while not done:
                action = choose_action(loaded.agent, obs["pixels"], greedy, generator, device)
                pixels.append(obs["pixels"])
                masks.append(obs["mask"])
                actions.append(action)
                episode_index.append(episode)
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
            returns.append(float(np.asarray(info["episode"]["r"])))
            progress.set_postfix(ret=f"{np.mean(returns):.1f}", frames=len(pixels))
    finally:
        env.close()
    frames = Frames(np.stack(pixels), (np.stack(masks) != 0).astype(np.uint8),
                    np.asarray(actions, dtype=np.int64), np.asarray(episode_index, dtype=np.int64))
    return frames, returns


# ---------------------------------------------------------------- metrics


def attention_maps(agent: Agent, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a* = argmax pi on the clean input, un-normalised Grad-CAM map of a*) for a batch of frames."""
    with torch.enable_grad():
        logits, _, features = agent.logits_value_features(pixels)
        best = logits.argmax(dim=1)
        maps = grad_cam(features, logits, best, tuple(pixels.shape[-2:]), create_graph=False)
    return best.detach(), maps.detach()


def action_probabilities(agent: Agent):
    def probs(pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(agent.actor(agent.head(agent.features(pixels))), dim=1)

    return probs


class Evaluation(NamedTuple):
    maps: torch.Tensor               # (N, H, W) un-normalised Grad-CAM of a*, every frame, on the CPU
    best_actions: torch.Tensor       # (N,) a* = argmax pi on the clean input
    used: torch.Tensor               # (N,) bool: the frame's mask is non-empty
    zero_map: torch.Tensor           # (U,) bool, for the U used frames
    scores: dict[str, torch.Tensor]  # (U,) per used frame
    curves: dict[str, torch.Tensor]  # (U, steps + 1) per used frame


def on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.cpu() for name, tensor in tensors.items()}


@torch.no_grad()
def evaluate_batch(agent: Agent, pixels: torch.Tensor, masks: torch.Tensor, steps: int,
                   generator: torch.Generator, ties: str = "random") -> Evaluation:
    best, maps = attention_maps(agent, pixels)
    used = has_target(masks)
    used_maps, used_masks, used_pixels, used_best = maps[used], masks[used], pixels[used], best[used]
    chance = chance_levels(used_masks)
    ranked_ties = "random" if ties == "random" else "index"
    scores = {
        "relevance_mass": relevance_mass(used_maps, used_masks),
        "relevance_mass_chance": chance["mass"],
        "relevance_rank": relevance_rank(used_maps, used_masks, ranked_ties, generator),
        "relevance_rank_chance": chance["rank"],
        "pointing_game": pointing_game(used_maps, used_masks, "any" if ties == "random" else "first"),
        "pointing_game_chance": chance["pointing"],
    }
    curves = {}
    if used.any():
        prob_fn = action_probabilities(agent)
        scores["occlusion_drop"] = occlusion_drop(prob_fn, used_pixels, used_masks, used_best)
        blobs = random_blob_masks(used_masks.cpu(), generator).to(used_masks.device)  # same area, random place
        scores["occlusion_drop_random"] = occlusion_drop(prob_fn, used_pixels, blobs, used_best)
        dilated = dilate_to_cells(used_masks, Agent.MAP_SIZE)  # the target at the map's resolution
        scores["occlusion_drop_dilated"] = occlusion_drop(prob_fn, used_pixels, dilated, used_best)
        dilated_blobs = random_blob_masks(dilated.cpu(), generator).to(used_masks.device)
        scores["occlusion_drop_dilated_random"] = occlusion_drop(prob_fn, used_pixels, dilated_blobs, used_best)
        by_map = deletion_insertion(prob_fn, used_pixels, used_maps, used_best, steps, order="map",
                                    generator=generator, ties=ranked_ties)
        by_chance = deletion_insertion(prob_fn, used_pixels, used_maps, used_best, steps, order="random",
                                       generator=generator)
        scores.update(deletion_auc=by_map.deletion_auc, deletion_auc_random=by_chance.deletion_auc,
                      insertion_auc=by_map.insertion_auc, insertion_auc_random=by_chance.insertion_auc)
        curves = {"deletion": by_map.deletion_curve, "deletion_random": by_chance.deletion_curve,
                  "insertion": by_map.insertion_curve, "insertion_random": by_chance.insertion_curve}
    return Evaluation(maps.cpu(), best.cpu(), used.cpu(), zero_maps(used_maps).cpu(), on_cpu(scores), on_cpu(curves))


def concatenate_dicts(dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per key, the concatenation over the dicts that have it (batches without a target have no curves)."""
    names = dict.fromkeys(name for entry in dicts for name in entry)
    return {name: torch.cat([entry[name] for entry in dicts if name in entry]) for name in names}


def evaluate(agent: Agent, frames: Frames, steps: int, batch_size: int, seed: int,
             device: torch.device, ties: str = "random") -> Evaluation:
    # a CPU generator: the random pixel order is the same on any device
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in tqdm(range(0, len(frames.pixels), batch_size), desc="attention", unit="batch", dynamic_ncols=True):
        pixels = torch.as_tensor(frames.pixels[start:start + batch_size], device=device)
        masks = torch.as_tensor(frames.masks[start:start + batch_size], device=device).bool()
        batches.append(evaluate_batch(agent, pixels, masks, steps, generator, ties))
    return Evaluation(
        maps=torch.cat([batch.maps for batch in batches]),
        best_actions=torch.cat([batch.best_actions for batch in batches]),
        used=torch.cat([batch.used for batch in batches]),
        zero_map=torch.cat([batch.zero_map for batch in batches]),
        scores=concatenate_dicts([batch.scores for batch in batches]),
        curves=concatenate_dicts([batch.curves for batch in batches]),
    )


FAITHFULNESS = ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random",
                "occlusion_drop", "occlusion_drop_random", "occlusion_drop_dilated", "occlusion_drop_dilated_random")


def mean_or_nan(values: torch.Tensor | None) -> float:
    return float(values.mean()) if values is not None and len(values) else math.nan


def metric_means(evaluation: Evaluation) -> dict[str, float]:
    """Means over the frames with a target; alignment and its chance level leave out zero-map frames.

    NaN (written as NaN in the JSON, which Python's json reads back) where no frame is left to average.
    """
    has_map = ~evaluation.zero_map
    means = {}
    for name in ALIGNMENT:
        for key in (name, f"{name}_chance"):
            means[key] = mean_or_nan(evaluation.scores[key][has_map])
    for key in FAITHFULNESS:
        means[key] = mean_or_nan(evaluation.scores.get(key))
    return means


# ---------------------------------------------------------------- pictures


def plot_curves(curves: dict[str, torch.Tensor], means: dict, steps: int, num_actions: int, path: Path) -> None:
    fractions = np.linspace(0.0, 1.0, steps + 1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, kind, better in zip(axes, ("deletion", "insertion"), ("lower", "higher")):
        for suffix, label, style in (("", "map order", "-"), ("_random", "random order", "--")):
            curve = curves[kind + suffix].mean(dim=0).numpy()
            auc = means[f"{kind}_auc{suffix}"]
            axis.plot(fractions, curve, style, label=f"{label} (AUC {auc:.4f})")
        axis.axhline(1.0 / num_actions, color="grey", linestyle=":", label=f"uniform pi (1/{num_actions})")
        axis.set_title(f"{kind} ({better} AUC is more faithful)")
        axis.set_xlabel(f"fraction of pixels {'deleted' if kind == 'deletion' else 'restored'}")
        axis.set_xlim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend()
    axes[0].set_ylabel("mean pi(a* | x)")
    count = len(curves["deletion"])
    figure.suptitle(f"deletion / insertion of pi(a*|x), mean over {count} frames with a target")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_grid(frames: Frames, evaluation: Evaluation, path: Path) -> None:
    """Newest frame of ~16 frames with a target, spread over the evaluation, with map and mask outline."""
    used_indices = torch.nonzero(evaluation.used).flatten().numpy()
    shown = used_indices[np.unique(np.linspace(0, len(used_indices) - 1, GRID_SIZE**2).round().astype(int))]
    mass = evaluation.scores["relevance_mass"].numpy()
    position_in_used = {index: i for i, index in enumerate(used_indices)}
    figure, axes = plt.subplots(GRID_SIZE, GRID_SIZE, figsize=(2.4 * GRID_SIZE, 2.6 * GRID_SIZE))
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, shown):
        attention = normalise_maps(evaluation.maps[index : index + 1])[0].numpy()
        axis.imshow(frames.pixels[index, -1], cmap="gray", vmin=0, vmax=255)
        axis.imshow(attention, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axis.contour(frames.masks[index], levels=[0.5], colors="lime", linewidths=1.2)
        frame_mass = mass[position_in_used[index]]
        mass_text = "zero map" if math.isnan(frame_mass) else f"mass {frame_mass:.2f}"
        axis.set_title(f"frame {index}  a*={int(evaluation.best_actions[index])}\n{mass_text}", fontsize=8)
    figure.suptitle("newest frame, Grad-CAM of a* (jet, normalised per frame), target mask (green outline)",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def upscale(image: np.ndarray) -> np.ndarray:
    """Nearest-neighbour upscale by GIF_SCALE of an (H, W, ...) array."""
    return image.repeat(GIF_SCALE, 0).repeat(GIF_SCALE, 1)


def label_panel(panel: np.ndarray, text: str) -> np.ndarray:
    import cv2  # the environments need OpenCV anyway

    return cv2.putText(np.ascontiguousarray(panel), text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                       (255, 255, 255), 1, cv2.LINE_AA)


def episode_panels(frame: np.ndarray, attention: np.ndarray, mask: np.ndarray, step: int,
                   action: int) -> np.ndarray:
    """(H*s, 3*W*s, 3) uint8: game frame | attention over the frame | mask outline over the frame."""
    grey = np.repeat(frame[..., None].astype(np.float32) / 255.0, 3, axis=2)
    heat = matplotlib.colormaps["jet"](attention)[..., :3]
    overlay = 0.5 * grey + 0.5 * heat
    outlined = upscale(grey)
    outlined[mask_outline(upscale(mask), width=2)] = (0.0, 1.0, 0.0)
    panels = [(image * 255).round().astype(np.uint8) for image in (upscale(grey), upscale(overlay), outlined)]
    texts = (f"step {step}", f"Grad-CAM a*={action}", "target mask")
    return np.concatenate([label_panel(panel, text) for panel, text in zip(panels, texts)], axis=1)


def write_episode_gif(frames: Frames, evaluation: Evaluation, path: Path) -> int:
    """GIF of the first episode (or the first frames when episodes are unknown); returns its frame count."""
    first_episode = frames.episode[0]
    indices = np.flatnonzero(frames.episode == first_episode) if first_episode >= 0 else np.arange(len(frames.pixels))
    indices = indices[:GIF_MAX_FRAMES]
    attention = normalise_maps(evaluation.maps[indices]).numpy()
    images = [episode_panels(frames.pixels[i, -1], attention[k], frames.masks[i], k, int(evaluation.best_actions[i]))
              for k, i in enumerate(indices)]
    import imageio.v3 as iio  # imported here: only the GIF needs it

    iio.imwrite(path, np.stack(images), duration=GIF_FRAME_MS, loop=0)
    return len(images)


# ---------------------------------------------------------------- report


def show(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def print_table(result: dict) -> None:
    means = result["means"]
    lines = [
        f"run {result['run']} ({result['env']}, {result['method']}, seed {result['seed']}, "
        f"step {result['checkpoint_step']})",
        f"frames: {result['frames_total']} total, {result['frames_used']} with a target, "
        f"{result['frames_empty_mask']} with an empty mask (left out), "
        f"{result['frames_zero_map']} with an all-zero map (left out of alignment)",
    ]
    if result["mean_return"] is not None:
        lines.append(f"mean return over {result['episodes']} episodes: {result['mean_return']:.1f}")
    lines += ["", f"{'metric':<16}{'agent':>10}{'chance':>10}"]
    for name in ALIGNMENT:
        lines.append(f"{name:<16}{show(means[name]):>10}{show(means[name + '_chance']):>10}")
    lines += ["", f"{'faithfulness':<16}{'map order':>10}{'random':>10}"]
    for name, better in (("deletion_auc", "lower"), ("insertion_auc", "higher")):
        lines.append(f"{name:<16}{show(means[name]):>10}{show(means[name + '_random']):>10}   ({better} is better)")
    lines += ["", f"{'occlusion':<16}{'target':>10}{'random':>10}"]
    lines.append(f"{'occlusion_drop':<16}{show(means['occlusion_drop']):>10}{show(means['occlusion_drop_random']):>10}"
                 "   (drop of pi(a*|x); random: a blob of equal area)")
    lines.append(f"{'  dilated':<16}{show(means['occlusion_drop_dilated']):>10}"
                 f"{show(means['occlusion_drop_dilated_random']):>10}   (the target grown by half a map cell)")
    print("\n".join(lines))


def build_result(args: Args, loaded: LoadedAgent, frames: Frames, evaluation: Evaluation,
                 returns: list[float] | None, source: dict) -> dict:
    used = int(evaluation.used.sum())
    curves = {name: curve.mean(dim=0).tolist() for name, curve in evaluation.curves.items()}
    return {
        "run": loaded.run_dir.name,
        "run_dir": str(loaded.run_dir),
        "env": loaded.config["env"],
        "method": loaded.config.get("method"),
        "seed": loaded.config.get("seed"),
        "targets": loaded.config.get("targets"),
        "checkpoint_step": loaded.checkpoint_step,
        "eval_seed": args.seed,
        "action_selection": "greedy" if args.greedy else "sampled",
        "frames_source": "file" if args.frames else "rollout",
        **source,
        "frames_total": len(frames.pixels),
        "frames_used": used,
        "frames_empty_mask": len(frames.pixels) - used,
        "frames_zero_map": int(evaluation.zero_map.sum()),
        "episodes": len(returns) if returns is not None else None,
        "mean_return": float(np.mean(returns)) if returns else None,
        "returns": returns,
        "deletion_steps": args.deletion_steps,
        "ties": args.ties,
        "means": metric_means(evaluation),
        "mean_curves": {"fractions": np.linspace(0, 1, args.deletion_steps + 1).tolist(), **curves},
        "notes": (
            "All metrics use only frames with a non-empty mask (frames_used), with the Grad-CAM map of "
            "a* = argmax pi on the clean input. Frames whose map is all zero (frames_zero_map) are left out "
            "of relevance_mass/rank/pointing_game and their chance levels, but kept in the deletion/insertion "
            "AUCs (their map order is then the pixel index). Chance = target fraction of the frame. "
            "Deletion: lower is more faithful; insertion: higher. *_random: the same with a random pixel order. "
            "occlusion_drop: pi(a*|x) minus pi(a*|x) with the target mask at the deletion baseline 0 in all 4 frames; "
            "occlusion_drop_random: the same for a random blob of equal area. "
            "occlusion_drop_dilated(_random): the same with the target mask grown by half a Grad-CAM cell on every "
            "side (eval.metrics.dilate_to_cells), and a random blob of that area. "
            "A mean is NaN when no frame is left to average."
        ),
    }


def check_args(args: Args) -> None:
    if args.deletion_steps < 1:
        raise EvalError(f"--deletion-steps must be >= 1, got {args.deletion_steps}")
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.ties not in ("random", "index"):
        raise EvalError(f"--ties must be 'random' or 'index', got '{args.ties}'")
    if args.frames is None and args.episodes < 1:
        raise EvalError(f"--episodes must be >= 1, got {args.episodes}")
    if not 0 <= args.seed <= SEED_MAX - args.episodes:
        raise EvalError(f"--seed must be in [0, {SEED_MAX} - episodes], got {args.seed}")
    outputs = [("--out", Path(args.out))] if args.out else []
    if args.record_frames:
        if Path(args.record_frames).is_dir():
            raise EvalError(f"--record-frames {args.record_frames}: is a folder; give a .npz file name")
        outputs.append(("--record-frames", Path(args.record_frames).parent))
    for name, folder in outputs:
        try:
            check_writable_dir(folder, name)
        except ValueError as error:
            raise EvalError(str(error)) from None


def run(args: Args) -> dict:
    check_args(args)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    loaded = load_agent(args.run, device)
    if not args.out:
        try:
            check_writable_dir(loaded.run_dir, "run folder")
        except ValueError as error:
            raise EvalError(f"{error}; give --out") from None
    if args.frames:
        frames, source = load_frames(args.frames, loaded.config["env"], loaded.num_actions)
        returns = None
    else:
        frames, returns = roll_out(loaded, args.episodes, args.seed, args.greedy, device)
        source = {}
    if args.record_frames:
        save_frames(args.record_frames, frames, loaded.config["env"], loaded.config.get("targets"), loaded.num_actions)

    evaluation = evaluate(loaded.agent, frames, args.deletion_steps, args.batch_size, args.seed, device, args.ties)
    result = build_result(args, loaded, frames, evaluation, returns, source)

    out_dir = Path(args.out) if args.out else loaded.run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    written = [out_dir / RESULT_FILE]
    if result["frames_used"]:
        plot_curves(evaluation.curves, result["means"], args.deletion_steps, loaded.num_actions,
                    out_dir / CURVES_PLOT)
        plot_grid(frames, evaluation, out_dir / GRID_PLOT)
        written += [out_dir / CURVES_PLOT, out_dir / GRID_PLOT]
    else:
        print("no frame has a target: no metrics and no pictures besides the GIF")
    if args.video:
        write_episode_gif(frames, evaluation, out_dir / EPISODE_GIF)
        written.append(out_dir / EPISODE_GIF)
    if args.record_frames:
        written.append(Path(args.record_frames))

    print_table(result)
    print("wrote " + ", ".join(str(path) for path in written))
    return result


def main(args: Args) -> dict:
    """Evaluate; input problems exit with one line `error: ...` on stderr and status 1."""
    try:
        return run(args)
    except EvalError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main(tyro.cli(Args))
