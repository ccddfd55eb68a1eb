"""A classifier study (experiments/study.py with a [classifier] table): declared, checked, run on Ray, resumed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents import run_folder
from conftest import load_study_module
from test_camal_classifier import make_folder

ROOT = Path(__file__).resolve().parents[1]
STUDY_SCRIPT = ROOT / "experiments" / "study.py"

STUDY = """
[classifier]
data = "{data}"

[budgets]
resnet_mini = 2
vit_mini = 3

[[runs]]
models = ["resnet_mini", "vit_mini"]
methods = ["vanilla", "camal"]
seeds = [1, 2]

[flags]
image_size = 32
batch_size = 16
image_every = 0

[method_flags.camal]
camal_coef = 0.5

[eval]
deletion_steps = 4
"""




study = load_study_module()


def test_a_classifier_study_declares_models_x_methods_x_seeds_with_epochs_as_budgets(tmp_path):
    declared = study.parse_study(STUDY.format(data=tmp_path / "data"), "s.toml", "s")
    assert len(declared.runs) == 2 * 2 * 2
    run = next(r for r in declared.runs if (r.env, r.method, r.seed) == ("vit_mini", "camal", 2))
    assert run.name == "vit_mini__camal__2" and run.budget == 3 and run.unit == "epochs"
    assert run.data == str(tmp_path / "data")
    assert run.train_flags == ("--image-size", "32", "--batch-size", "16", "--image-every", "0",
                               "--camal-coef", "0.5")
    assert run.eval_flags == ("--deletion-steps", "4")


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("resnet_mini = 2", "alexnet = 2"), "unknown model 'alexnet'"),
    (lambda text: text.replace("vit_mini = 3", "vit_mini = 0"), "number of epochs > 0"),
    (lambda text: text.replace('models = ["resnet_mini", "vit_mini"]', 'scenarios = ["basic"]'),
     "needs exactly the keys models, methods, seeds"),
    (lambda text: text.replace("image_size = 32", "image_size = 40\nmodel = 'x'"), "runner-set flag 'model'"),
    (lambda text: text.replace("image_size = 32", "image_size = 36"), "vit_mini"),
    (lambda text: text.replace("deletion_steps = 4", "episodes = 4"), "unknown or runner-set flag 'episodes'"),
])
def test_a_bad_classifier_study_is_refused_in_one_line(tmp_path, edit, message):
    with pytest.raises(study.StudyError) as error:
        study.parse_study(edit(STUDY.format(data=tmp_path)), "s.toml", "s")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_a_study_whose_data_folder_is_missing_is_refused_before_ray_starts(tmp_path):
    file = tmp_path / "dl.toml"
    file.write_text(STUDY.format(data=tmp_path / "nowhere"))
    done = subprocess.run([sys.executable, str(STUDY_SCRIPT), str(file), "--results-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("error:") and "vision/doom_objects.py" in done.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_classifier_study_trains_and_evaluates_every_run_and_a_rerun_trains_nothing(tmp_path):
    data = make_folder(tmp_path / "squares", per_class=16)
    file = tmp_path / "dl.toml"
    file.write_text(STUDY.format(data=data).replace('"vit_mini"]', ']').replace("seeds = [1, 2]", "seeds = [1]"))
    results = tmp_path / "results"
    cmd = [sys.executable, str(STUDY_SCRIPT), str(file), "--results-dir", str(results), "--num-cpus", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for method in ("vanilla", "camal"):
        (folder,) = [p.parent for p in (results / f"resnet_mini__{method}__1").glob("*/config.json")]
        assert run_folder.load_classifier_checkpoint(folder)["epoch"] == 2
        evaluation = json.loads((folder / run_folder.CLASSIFIER_EVAL).read_text())
        assert evaluation["method"] == method and set(evaluation["splits"]) == {"val", "test_balanced"}
        assert run_folder.read_config(folder)["camal_coef"] == (0.5 if method == "camal" else 0.0)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0 and "2 done, 0 to resume, 0 to start" in again.stdout


def test_the_shipped_dl_studies_declare_their_runs():
    paper = study.load_study(str(ROOT / "experiments" / "paper_dl.toml"))
    architectures = {"resnet_mini", "vit_mini", "swin_mini", "maxvit_mini", "convnext_mini", "efficientnet_mini"}
    assert {r.env for r in paper.runs} == architectures and len(paper.runs) == 6 * 2 * 5 + 2 * 4 * 5
    for model in architectures:
        for method in ("vanilla", "camal"):
            assert sorted(r.seed for r in paper.runs if (r.env, r.method) == (model, method)) == [1, 2, 3, 4, 5]
    controls = {(r.env, r.method) for r in paper.runs if r.method not in ("vanilla", "camal")}
    assert controls == {(m, c) for m in ("resnet_mini", "vit_mini")
                        for c in ("rrr", "entropy", "camal-random", "camal-uniform")}
    assert {r.data for r in paper.runs} == {str((ROOT / "data" / "doom_objects").resolve())}
    curves = study.load_study(str(ROOT / "experiments" / "dl_curves.toml"))
    assert {r.env for r in curves.runs} == architectures and {r.method for r in curves.runs} == {"vanilla"}
