"""Label buffer + ``state.labels`` -> binary mask of a scenario's target objects.

Label values are reassigned every frame by draw order, so the class of a pixel is looked up
through ``state.labels`` (value -> object_name, object_category) and never inferred from the value.
A target is an object name (``Cacodemon``) or a category (``Monster``); see docs/method.md s.2.
Each stock scenario's targets are in its record (scenarios/table.py); a custom scenario's come from
``--targets``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from scenarios import SCAN_FRAMES, is_config_path, objects_seen, scenario_record

# Categories and names that are never targets, whatever a target list says: the player's own
# weapon, smoke and teleport fog, blood, corpses, engine internals and bullet puffs.
NEVER_TARGETS: frozenset[str] = frozenset({"Self", "SFX", "Gibs", "Gore", "Internal", "BulletPuff"})

# Names and categories seen in the stock scenarios (vizdoom 1.3.2), used to validate overrides.
KNOWN_OBJECTS: frozenset[str] = frozenset(
    {
        # categories
        "Monster", "Player", "Health", "Armor", "Ammo", "Weapon", "Explosive",
        # object names
        "Cacodemon", "Demon", "MarineChainsawVzd", "DoomImp", "DoomImpBall", "Zombieman",
        "ShotgunGuy", "ChaingunGuy", "Medikit", "CustomMedikit", "Poison", "Stimpack",
        "HealthBonus", "GreenArmor", "BlueArmor", "ArmorBonus", "Clip", "ClipBox", "ShellBox",
        "RocketBox", "CellPack", "Shotgun", "Chaingun", "Chainsaw", "RocketLauncher",
        "PlasmaRifle", "Rocket", "CustomRocket",
    }
)


def parse_targets(spec: str | Sequence[str], known: Iterable[str] = KNOWN_OBJECTS) -> tuple[str, ...]:
    """Validate a target override (comma-separated string or list) against the ``known`` objects."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
    names = [n for n in names if n]
    if not names:
        raise ValueError("empty target list; give object names or categories, e.g. 'Cacodemon,Monster'")
    known = frozenset(known)
    for name in names:
        if name in NEVER_TARGETS:
            raise ValueError(f"'{name}' can never be a target (never targets: {', '.join(sorted(NEVER_TARGETS))})")
        if name not in known:
            raise ValueError(f"unknown target '{name}'; valid: {', '.join(sorted(known))}")
    return tuple(names)


def possible_targets_seen(scenario: str) -> dict[str, str]:
    """{name: category} of the objects, never-targets left out, seen in a scenario's first frames of
    random play."""
    return {name: category for name, category in sorted(objects_seen(scenario).items())
            if name not in NEVER_TARGETS and category not in NEVER_TARGETS}


def targets_for(scenario: str, override: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The scenario's targets (its record's), or the validated override.

    A custom scenario (a .cfg) has no default: without an override the error lists the objects seen
    in its first frames of random play. Its override may also name objects only it has (seen there).
    """
    spec = scenario_record(scenario)
    if override is not None:  # an empty override is refused, not the defaults
        try:
            return parse_targets(override)
        except ValueError:
            if not is_config_path(scenario):
                raise
        seen = possible_targets_seen(scenario)
        return parse_targets(override, KNOWN_OBJECTS | set(seen) | set(seen.values()))
    if spec.targets:
        return spec.targets
    raise ValueError(f"custom scenario {scenario} has no default targets: give --targets (object names or "
                     f"categories, comma-separated); seen in its first {SCAN_FRAMES} frames of random play: "
                     f"{', '.join(f'{n} ({c})' for n, c in possible_targets_seen(scenario).items()) or 'none'}")


def target_values(labels: Iterable, targets: Iterable[str]) -> list[int]:
    """Label values of this frame's target objects (``labels`` is ``state.labels``)."""
    targets = set(targets)
    return [
        label.value
        for label in labels
        if (label.object_name in targets or label.object_category in targets)
        and label.object_name not in NEVER_TARGETS
        and label.object_category not in NEVER_TARGETS
    ]


def label_mask(labels_buffer: np.ndarray, labels: Iterable, targets: Iterable[str]) -> np.ndarray:
    """Boolean mask (same H x W as the buffer) of the pixels whose object is a target.

    ``labels`` is ``state.labels``: objects with ``value``, ``object_name``, ``object_category``.
    The buffer may be the engine's or a nearest-neighbour resize of it (values are kept as they are).
    """
    buffer = labels_buffer[..., 0] if labels_buffer.ndim == 3 else labels_buffer
    mask = np.zeros(buffer.shape, dtype=bool)
    # A frame holds a few target objects: one comparison each is several times faster than np.isin.
    for value in target_values(labels, targets):
        mask |= buffer == value
    return mask


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to ``size`` = (height, width)."""
    height, width = size
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Bool: the mask's pixels within ``width`` pixels of its border (for drawing it over a frame)."""
    mask = mask.astype(bool)
    interior = mask
    for _ in range(width):
        padded = np.pad(interior, 1, constant_values=False)
        interior = interior & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior
