"""The house's layering: what may import what, and the facts that have one home."""

import ast
from pathlib import Path

import pytest
import tyro

from agents.methods import METHODS, method_label
from agents.ppo_args import Args

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "eval", "experiments", "benchmarks", "envs", "masks", "scenarios", "vision")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules_under(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def test_nothing_imports_the_training_script():
    importers = [str(path.relative_to(ROOT)) for path in modules_under(*PACKAGES)
                 if "agents.ppo_camal" in imported_modules(path)]
    assert importers == []


@pytest.mark.parametrize("lower, upper", [("masks", "envs"), ("masks", "eval"), ("agents", "eval"),
                                          ("agents", "experiments"), ("envs", "agents")])
def test_no_arrow_runs_back_up(lower, upper):
    offenders = [str(path.relative_to(ROOT)) for path in modules_under(lower)
                 if any(name == upper or name.startswith(upper + ".") for name in imported_modules(path))]
    assert offenders == []


def test_no_module_edits_sys_path():
    edits = ("sys.path.insert", "sys.path.append", "sys.path.extend", "sys.path[", "sys.path =", "sys.path +=")
    offenders = [str(path.relative_to(ROOT)) for path in modules_under(*PACKAGES)
                 if any(edit in path.read_text() for edit in edits)]
    assert offenders == []


@pytest.mark.parametrize("label", sorted(METHODS))
def test_each_method_label_is_what_its_flags_train(label):
    args = tyro.cli(Args, args=METHODS[label])
    assert method_label(args.attn_loss, args.mask_source) == label
