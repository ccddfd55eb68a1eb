"""Scenario names and .cfg files: which scenario a ``--env`` names, and what its .cfg holds.

``--env`` is a stock short name (a record of scenarios/table.py) or the path of a .cfg file (a
custom scenario). A .cfg's ``doom_scenario_path`` (the .wad) is resolved as vizdoom resolves it,
relative to the .cfg, falling back to vizdoom's own scenarios folder, so a copy of a stock .cfg
works from anywhere.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import vizdoom as vzd

from scenarios.table import SCENARIOS, Scenario, is_config_path

SCAN_FRAMES = 300
"""agent steps (frame skip 4) of random play scanned for the objects a custom scenario shows"""


def config_path(spec: Scenario) -> str:
    """The .cfg file of a record (a custom one's path is absolute already)."""
    return os.path.join(vzd.scenarios_path, spec.config_file)


def _loaded_config(cfg: str) -> tuple[str, tuple[str, ...]]:
    """(doom_scenario_path as written in the .cfg, names of its delta buttons)."""
    game = vzd.DoomGame()
    game.load_config(cfg)
    delta = tuple(button.name for button in game.get_available_buttons() if vzd.is_delta_button(button))
    return game.get_doom_scenario_path(), delta


def delta_buttons(spec: Scenario) -> tuple[str, ...]:
    return _loaded_config(config_path(spec))[1]


def playable_names() -> list[str]:
    """Stock short names whose buttons are all discrete."""
    return [name for name, spec in SCENARIOS.items() if not delta_buttons(spec)]


def valid_envs() -> str:
    return f"{', '.join(playable_names())}, or the path of a .cfg file whose buttons are all discrete"


def scenario_record(env: str) -> Scenario:
    """The stock record of a short name, or a record of a custom .cfg (name: its absolute path,
    no targets, reward scale or normalisation constants)."""
    if is_config_path(env):
        path = Path(env).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"scenario config '{env}' does not exist; valid: {valid_envs()}")
        return Scenario(str(path), str(path), reward_scale=None)
    if env not in SCENARIOS:
        raise ValueError(f"unknown scenario '{env}'; valid: {valid_envs()}")
    return SCENARIOS[env]


def wad_path(spec: Scenario) -> str:
    """The .wad of a scenario: the .cfg's doom_scenario_path, relative to the .cfg or in vizdoom's
    scenarios folder (absolute paths as they are)."""
    cfg = config_path(spec)
    written = _loaded_config(cfg)[0]
    if not written:
        raise ValueError(f"{cfg} sets no doom_scenario_path; valid: a .wad path, absolute or relative to the .cfg")
    # vizdoom has already joined a relative path to the .cfg's folder
    candidates = [os.path.join(os.path.dirname(cfg), written), os.path.join(vzd.scenarios_path, os.path.basename(written))]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ValueError(f"the .wad of {cfg}, doom_scenario_path = {written}, is neither next to the .cfg nor in "
                     f"vizdoom's scenarios folder ({vzd.scenarios_path}); give an existing .wad path")


def check_scenario(env: str) -> Scenario:
    """The record of ``env``; ValueError (one line) for an unknown name, a missing .cfg or .wad, or
    delta (mouse-like) buttons, which this discrete-action PPO cannot press."""
    spec = scenario_record(env)
    wad_path(spec)
    delta = delta_buttons(spec)
    if delta:
        raise ValueError(f"scenario '{env}' uses delta (mouse-like) buttons ({', '.join(delta)}), which this "
                         f"discrete-action PPO does not support; valid: {valid_envs()}")
    return spec


def objects_seen(env: str, frames: int = SCAN_FRAMES, seed: int = 0) -> dict[str, str]:
    """{object name: category} of every labelled object in the first ``frames`` agent steps of random
    play (one random button at a time, frame skip 4, new episodes as needed)."""
    spec = check_scenario(env)
    game = vzd.DoomGame()
    game.load_config(config_path(spec))
    game.set_doom_scenario_path(wad_path(spec))
    game.set_window_visible(False)
    game.set_labels_buffer_enabled(True)
    game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
    game.set_seed(seed)
    os.makedirs("_vizdoom", exist_ok=True)  # engines starting together can race on creating it
    game.init()
    rng = random.Random(seed)
    buttons = len(game.get_available_buttons())
    seen: dict[str, str] = {}
    try:
        for _ in range(frames):
            if game.is_episode_finished():
                game.new_episode()
            state = game.get_state()
            for label in state.labels if state is not None else ():
                seen.setdefault(label.object_name, label.object_category)
            action = [0.0] * buttons
            action[rng.randrange(buttons)] = 1.0
            game.make_action(action, 4)
    finally:
        game.close()
    return seen
