"""Binary target masks from ViZDoom's label buffer."""

from masks.labels import (
    NEVER_TARGETS,
    KNOWN_OBJECTS,
    label_mask,
    mask_outline,
    parse_targets,
    resize_mask,
    targets_for,
)

__all__ = [
    "NEVER_TARGETS",
    "KNOWN_OBJECTS",
    "label_mask",
    "mask_outline",
    "parse_targets",
    "resize_mask",
    "targets_for",
]
