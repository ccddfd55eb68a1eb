"""Draw a scenario's target masks over its frames, to check them by eye.

Plays the scenario with a random policy and writes a PNG grid: for each captured frame, the engine's
160x120 screen (upscaled) with the full-resolution mask, and the 84x84 observation the agent gets
(newest frame of the stack) with its mask. Masks are drawn as a translucent fill plus an outline;
each frame's title lists the objects inside the mask.

    python envs/preview.py --env basic --frames 8 --out mask_preview.png
    python envs/preview.py --env deadly_corridor --targets Monster,Explosive
    python envs/preview.py --env path/to/my.cfg --targets Cacodemon      # a custom scenario
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from envs.doom import check_scenario, make_env  # noqa: E402
from masks.labels import label_mask, targets_for  # noqa: E402
from scenarios import short_name  # noqa: E402

FILL_RGBA = (1.0, 0.15, 0.15, 0.45)
OUTLINE_COLOUR = "yellow"


@dataclass
class Args:
    env: str = "basic"
    """Scenario: a stock short name (scenarios/table.py) or the path of a .cfg file (then --targets is needed)."""
    frames: int = 8
    """How many frames to draw."""
    out: str = "mask_preview.png"
    """Where to write the PNG (its folder must exist)."""
    targets: str | None = None
    """Comma-separated object names or categories replacing the scenario's targets, e.g. 'Monster,GreenArmor'."""
    every: int = 5
    """Random-policy steps between two drawn frames."""
    seed: int = 0
    """Seeds the engine and the random policy."""
    columns: int = 2
    """Frames per row of the grid (each frame takes two panels)."""


@dataclass
class Frame:
    step: int
    screen: np.ndarray  # (120, 160) uint8, the engine's screen
    screen_mask: np.ndarray  # (120, 160) bool, from the label buffer
    observation: np.ndarray  # (84, 84) uint8, newest frame of the observation stack
    observation_mask: np.ndarray  # (84, 84) uint8, the observation's mask
    objects: list[str]  # names of the target objects with pixels in the mask


def objects_in_mask(state, targets: tuple[str, ...]) -> list[str]:
    """Names of the target objects that have at least one pixel in this frame's mask."""
    return [
        label.object_name
        for label in state.labels
        if label_mask(state.labels_buffer, [label], targets).any()
    ]


def capture_frames(scenario: str, targets: tuple[str, ...], count: int, every: int, seed: int) -> list[Frame]:
    """Random play; every ``every`` steps keep the engine state and the agent's observation."""
    env = make_env(scenario, targets=targets, reward_transform="none")  # rewards are not drawn
    env.action_space.seed(seed)
    frames: list[Frame] = []
    try:
        observation, _ = env.reset(seed=seed)
        step = 0
        while len(frames) < count:
            state = env.unwrapped.state
            if step % every == 0 and state is not None:
                frames.append(
                    Frame(
                        step=step,
                        screen=state.screen_buffer.copy(),
                        screen_mask=label_mask(state.labels_buffer, state.labels, targets),
                        observation=observation["pixels"][-1].copy(),
                        observation_mask=observation["mask"].copy(),
                        objects=objects_in_mask(state, targets),
                    )
                )
            observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
            step += 1
            if terminated or truncated:
                observation, _ = env.reset()
    finally:
        env.close()
    return frames


def describe_objects(objects: list[str]) -> str:
    if not objects:
        return "mask empty"
    counts = Counter(objects)
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in sorted(counts.items()))


def draw_masked(ax, image: np.ndarray, mask: np.ndarray, title: str) -> None:
    """Grey image, mask as a translucent fill and an outline."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    fill = np.zeros((*mask.shape, 4))
    fill[mask.astype(bool)] = FILL_RGBA
    ax.imshow(fill, interpolation="nearest")
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=OUTLINE_COLOUR, linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_grid(frames: list[Frame], scenario: str, targets: tuple[str, ...], columns: int, path: str) -> None:
    rows = (len(frames) + columns - 1) // columns
    figure, axes = plt.subplots(
        rows, 2 * columns, figsize=(2 * columns * 3.2, rows * 2.6), squeeze=False,
        gridspec_kw={"width_ratios": [160, 120] * columns},
    )
    for ax in axes.flat:
        ax.axis("off")
    for index, frame in enumerate(frames):
        row, column = divmod(index, columns)
        screen_ax, observation_ax = axes[row, 2 * column], axes[row, 2 * column + 1]
        screen_ax.axis("on")
        observation_ax.axis("on")
        draw_masked(screen_ax, frame.screen, frame.screen_mask,
                    f"step {frame.step}: {describe_objects(frame.objects)}")
        draw_masked(observation_ax, frame.observation, frame.observation_mask,
                    f"84x84 obs, {int(frame.observation_mask.sum())} px")
    figure.suptitle(f"{short_name(scenario)}: mask of {', '.join(targets)}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def check_args(args: Args) -> tuple[str, ...]:
    """The targets to draw; ValueError (one line) for bad arguments, before an engine starts."""
    check_scenario(args.env)
    targets = targets_for(args.env, args.targets)
    for name in ("frames", "every", "columns"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    folder = out.parent
    if out.is_dir():
        raise ValueError(f"--out {args.out}: is a folder; give a .png file name")
    if not folder.is_dir():
        raise ValueError(f"--out {args.out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {args.out}: folder {folder} is not writable")
    return targets


def main(args: Args) -> None:
    """Bad arguments exit with one line `error: ...` and status 1, before an engine starts."""
    try:
        targets = check_args(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    frames = capture_frames(args.env, targets, args.frames, args.every, args.seed)
    draw_grid(frames, args.env, targets, args.columns, args.out)
    non_empty = sum(bool(frame.objects) for frame in frames)
    print(f"wrote {args.out}: {len(frames)} frames of {args.env}, {non_empty} with a target in the mask")


if __name__ == "__main__":
    main(tyro.cli(Args))
