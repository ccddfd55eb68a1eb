"""The supervised trainer (agents/camal_classifier.py) and its evaluation (eval/classifier.py), on a tiny folder."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import run_folder
from agents.camal_classifier import Args, main
from eval.classifier import Args as EvalArgs
from eval.classifier import main as evaluate
from vision.folder import write_sample, write_split

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
TINY = ["--model", "resnet_mini", "--image-size", str(SIZE), "--batch-size", "16", "--no-cuda", "--image-every", "0"]


def make_folder(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """Two classes: a red or a blue square (the object, its mask) at a random place on a grey noise background."""
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": [], "test_balanced": []}
    for label, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        for index in range(per_class):
            image = rng.integers(90, 150, size=(SIZE, SIZE, 3), dtype=np.uint8)
            mask = np.zeros((SIZE, SIZE), dtype=bool)
            side = int(rng.integers(6, 12))
            row, col = rng.integers(0, SIZE - side, size=2)
            mask[row:row + side, col:col + side] = True
            image[mask] = colour
            relative = write_sample(root, f"class{label}", f"{index:03d}", image, mask)
            split = "train" if index < per_class // 2 else ("val" if index % 2 else "test_balanced")
            splits[split].append(relative)
    for split, paths in splits.items():
        write_split(root, split, paths)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data") / "squares")


def train(data: Path, runs: Path, *flags: str) -> Path:
    from agents.camal_classifier import parse_args

    return main(parse_args(["--data", str(data), "--runs-dir", str(runs), *TINY, *flags]))


@pytest.mark.slow
@pytest.mark.parametrize("attn_loss, mask_source", [("camal", "labels"), ("none", "labels"), ("rrr", "labels"),
                                                    ("entropy", "labels"), ("camal", "random"),
                                                    ("camal", "uniform")])
def test_a_run_writes_its_config_curves_and_checkpoint(data, tmp_path, attn_loss, mask_source):
    run_dir = train(data, tmp_path, "--epochs", "2", "--attn-loss", attn_loss, "--mask-source", mask_source)
    config = run_folder.read_config(run_dir)
    assert config["classes"] == ["class0", "class1"] and config["grid"] == [2, 2]
    assert config["method"] == {"none": "vanilla"}.get(attn_loss, attn_loss if mask_source == "labels"
                                                       else f"{attn_loss}-{mask_source}")
    curves = run_folder.read_curves(run_dir)
    assert [row["epoch"] for row in curves] == [1.0, 2.0]
    for row in curves:
        assert 0 <= row["val_accuracy"] <= 1 and 0 <= row["test_balanced_accuracy"] <= 1
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_relevance_mass"])
        assert np.isfinite(row["train_attention_loss"]) == (attn_loss != "none")
    assert run_folder.load_classifier_checkpoint(run_dir)["epoch"] == 2
    assert list(run_dir.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_camal_learns_the_squares_and_lowers_its_attention_loss(tmp_path):
    """On a set where the object's colour is the only signal, 6 epochs over 96 images classify the held-out ones."""
    data = make_folder(tmp_path / "squares", per_class=96)
    curves = run_folder.read_curves(train(data, tmp_path / "runs", "--epochs", "6", "--camal-coef", "1"))
    assert curves[-1]["val_accuracy"] >= 0.9
    assert curves[-1]["train_attention_loss"] < curves[0]["train_attention_loss"]


@pytest.mark.slow
def test_resuming_after_epoch_one_gives_the_run_trained_in_one_go(data, tmp_path):
    straight = train(data, tmp_path / "a", "--epochs", "2")
    first = train(data, tmp_path / "b", "--epochs", "1")
    from agents.camal_classifier import parse_args

    resumed = main(parse_args(["--resume", str(first), "--epochs", "2"]))
    assert resumed == first
    a = run_folder.load_classifier_checkpoint(straight)["model"]
    b = run_folder.load_classifier_checkpoint(resumed)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert run_folder.read_curves(straight)[1]["val_accuracy"] == run_folder.read_curves(resumed)[1]["val_accuracy"]


@pytest.mark.slow
def test_test_every_scores_the_held_out_splits_every_n_epochs_and_at_the_last_and_does_not_change_training(
        data, tmp_path):
    every = train(data, tmp_path / "a", "--epochs", "3")
    sparse = train(data, tmp_path / "b", "--epochs", "3", "--test-every", "2")
    dense_rows, sparse_rows = run_folder.read_curves(every), run_folder.read_curves(sparse)
    assert [np.isfinite(row["test_balanced_accuracy"]) for row in sparse_rows] == [False, True, True]
    assert all(np.isfinite(row["val_accuracy"]) for row in sparse_rows)
    for dense_row, sparse_row in zip(dense_rows, sparse_rows):
        assert dense_row["val_accuracy"] == sparse_row["val_accuracy"]
        assert dense_row["train_loss"] == sparse_row["train_loss"]
    a = run_folder.load_classifier_checkpoint(every)["model"]
    b = run_folder.load_classifier_checkpoint(sparse)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_exit_143_then_resume_finishes(data, tmp_path):
    cmd = [sys.executable, str(ROOT / "agents/camal_classifier.py"), "--data", str(data), "--runs-dir",
           str(tmp_path), *TINY, "--epochs", "200"]
    process = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/curves.csv")) and time.time() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    (run_dir,) = [path.parent for path in tmp_path.glob("*/config.json")]
    stopped = run_folder.load_classifier_checkpoint(run_dir)
    assert stopped["epoch"] < 200 and "--resume" in stderr
    done = subprocess.run([sys.executable, str(ROOT / "agents/camal_classifier.py"), "--resume", str(run_dir),
                           "--epochs", str(stopped["epoch"] + 1)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert run_folder.load_classifier_checkpoint(run_dir)["epoch"] == stopped["epoch"] + 1


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--model", "alexnet"], "valid:"),
    (["--image-size", "40", "--model", "maxvit_mini"], "maxvit_mini"),
    (["--learning-rate", "-1"], "--learning-rate must be > 0"),
    (["--camal-coef", "nan"], "finite"),
    (["--test-every", "-1"], "--test-every must be >= 0"),
])
def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys, flags, message):
    from agents.camal_classifier import parse_args

    with pytest.raises(SystemExit) as stop:
        main(parse_args(["--data", str(data), "--runs-dir", str(tmp_path / "runs"), *TINY, *flags]))
    assert str(stop.value).startswith("error:") and message in str(stop.value) and "\n" not in str(stop.value)
    assert not (tmp_path / "runs").exists()


def test_a_data_folder_without_a_train_split_is_refused(tmp_path):
    folder = make_folder(tmp_path / "d", per_class=4)
    (folder / "splits" / "train.txt").unlink()
    with pytest.raises(SystemExit) as stop:
        main(Args(data=str(folder), runs_dir=str(tmp_path / "runs"), cuda=False))
    assert "no train split" in str(stop.value) and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_resume_refuses_to_change_the_model(data, tmp_path):
    from agents.camal_classifier import parse_args

    run_dir = train(data, tmp_path, "--epochs", "1")
    with pytest.raises(SystemExit) as stop:
        main(parse_args(["--resume", str(run_dir), "--model", "convnext_mini"]))
    assert "cannot change --model" in str(stop.value)


@pytest.mark.slow
def test_the_evaluation_reports_every_split_with_chance_levels(data, tmp_path):
    run_dir = train(data, tmp_path, "--epochs", "2")
    result = evaluate(EvalArgs(run=str(run_dir), cuda=False, deletion_steps=4))
    written = json.loads((run_dir / run_folder.CLASSIFIER_EVAL).read_text())
    assert written == json.loads(json.dumps(result))
    assert set(result["splits"]) == {"val", "test_balanced"}
    for scores in result["splits"].values():
        assert scores["images"] == 12 and scores["images_with_mask"] == 12
        assert 0 <= scores["images_zero_map"] <= 12
        assert 0 <= scores["accuracy"] <= 1 and scores["images_per_s"] > 0
        # chance of every alignment metric is the mask's share of the image: 36 to 121 of 1024 pixels
        assert 36 / 1024 <= scores["relevance_mass_chance"] <= 121 / 1024
        for key in ("deletion_auc", "insertion_auc", "occlusion_drop", "occlusion_drop_random"):
            assert np.isfinite(scores[key])


def test_the_evaluation_counts_the_all_zero_maps_that_alignment_leaves_out(data):
    from eval.classifier import evaluate_split
    from vision import models
    from vision.folder import ImageMaskFolder

    torch.manual_seed(0)
    images, masks, labels = ImageMaskFolder(data, "test_balanced", SIZE).tensors(progress=False)
    classifier = models.create("resnet_mini", 2, SIZE).eval()
    args = EvalArgs(run="unused", cuda=False, deletion_steps=2)
    seeing = evaluate_split(classifier, images, masks, labels, args, torch.device("cpu"))
    assert seeing["images_zero_map"] < seeing["images_with_mask"] == 12
    assert np.isfinite(seeing["relevance_mass"])

    head = [module for module in classifier.modules() if isinstance(module, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(head.weight)  # logits no longer depend on the features: every Grad-CAM is all zero
    blind = evaluate_split(classifier, images, masks, labels, args, torch.device("cpu"))
    assert blind["images_zero_map"] == blind["images_with_mask"] == 12
    assert all(np.isnan(blind[key]) for key in ("relevance_mass", "relevance_rank", "pointing_game"))
    assert np.isfinite(blind["deletion_auc"])  # faithfulness still scores every image (ties in random order)


def test_the_evaluation_refuses_a_folder_that_is_no_classifier_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate(EvalArgs(run=str(tmp_path), cuda=False))
    assert "no checkpoint.pt" in str(stop.value)


@pytest.mark.slow
def test_camal_with_lambda_0_is_exactly_the_cross_entropy_run(data, tmp_path):
    vanilla = train(data, tmp_path / "a", "--epochs", "1", "--attn-loss", "none")
    camal_0 = train(data, tmp_path / "b", "--epochs", "1", "--attn-loss", "camal", "--camal-coef", "0")
    a = run_folder.load_classifier_checkpoint(vanilla)["model"]
    b = run_folder.load_classifier_checkpoint(camal_0)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.slow
def test_every_reduced_architecture_trains_evaluates_records_and_aggregates(data, tmp_path):
    from vision.models import REDUCED_MODELS

    for model in REDUCED_MODELS:
        for method in ("none", "camal"):
            run_dir = train(data, tmp_path / "runs", "--epochs", "1", "--model", model, "--attn-loss", method)
            evaluate(EvalArgs(run=str(run_dir), cuda=False, deletion_steps=2))
    runs = sorted((tmp_path / "runs").glob("*/config.json"))
    assert len(runs) == 2 * len(REDUCED_MODELS)
    record = subprocess.run([sys.executable, str(ROOT / "eval/record.py"), *[str(p.parent) for p in runs],
                             "--study", "tiny", "--results-dir", str(tmp_path / "results")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert record.returncode == 0, record.stderr
    aggregate = subprocess.run([sys.executable, str(ROOT / "eval/aggregate.py"), str(tmp_path / "results" / "tiny"),
                                "--reps", "200", "--out", str(tmp_path / "aggregate")],
                               capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert aggregate.returncode == 0, aggregate.stderr
    assert all(model in aggregate.stdout for model in REDUCED_MODELS)
