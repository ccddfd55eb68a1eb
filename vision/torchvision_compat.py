"""Import torchvision beside a CPU-only torch whose matching torchvision wheel is the CUDA build.

torchvision 0.28.0 is the release for torch 2.13.0, and on a CPU-only machine pip may find only its CUDA
wheel. That wheel's compiled operators (``torchvision/_C.so``: ``nms``, ``roi_align``, ...) do not load
beside the CPU torch, and ``import torchvision`` then fails with "operator torchvision::nms does not exist":
its Python side registers fake (meta) kernels for ``torchvision::nms`` and ``torchvision::qnms`` whether or not
the compiled library loaded. Defining those two operators' schemas (no kernels) is enough for the import;
the models, transforms and data sets work, and the detection operators that would need the kernels
(``torchvision.ops.nms`` and friends) keep raising torchvision's own "Couldn't load custom C++ ops" error.
Classification never calls them.

``import_torchvision()`` first lets torch load the compiled library as torchvision would; only if the
schemas are still missing afterwards does it define them. Where torchvision's library loads (a GPU machine
with the CUDA torch) nothing is defined and torchvision is imported unchanged.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

# The operators torchvision's _meta_registrations.py registers fake kernels for unconditionally.
MISSING_WHEN_UNLOADED = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# Kept for the life of the process: a torch.library.Library removes its definitions when collected.
_schema_library: torch.library.Library | None = None


def has_operator(name: str) -> bool:
    """Whether ``torchvision::name`` has a schema in torch's dispatcher."""
    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def try_loading_compiled_ops() -> bool:
    """Load ``torchvision/_C`` as torchvision's own import does (without importing torchvision); True if it loaded."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed; install it with: pip install -r requirements.txt")
    for folder in spec.submodule_search_locations:
        for library in sorted(Path(folder).glob("_C.*")):
            if library.suffix in (".so", ".pyd", ".dylib"):
                try:
                    torch.ops.load_library(str(library))
                    return True
                except (OSError, ImportError):
                    return False
    return False


def define_missing_schemas() -> list[str]:
    """Define the schemas in ``MISSING_WHEN_UNLOADED`` that are not defined yet; returns the ones defined."""
    global _schema_library
    missing = [name for name in MISSING_WHEN_UNLOADED if not has_operator(name)]
    if missing:
        if _schema_library is None:
            _schema_library = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            _schema_library.define(MISSING_WHEN_UNLOADED[name])
    return missing


def import_torchvision() -> ModuleType:
    """``import torchvision``, defining the compiled operators' schemas first where they cannot load. Idempotent."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if not try_loading_compiled_ops():
        define_missing_schemas()
    import torchvision

    return torchvision
