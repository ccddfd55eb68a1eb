"""Classifier run records: eval/record.py exports them, eval/runs.py reads them, eval/aggregate.py and
eval/report.py aggregate them per architecture and across architectures (the DL block)."""

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import trim_mean, ttest_ind, ttest_rel

from agents.run_folder import CLASSIFIER_EVAL, CONFIG, CURVES, read_curves, write_curves
from conftest import ROOT, refusal, run_python
from eval import tables
from eval.aggregate import Args as AggregateArgs
from eval.aggregate import main as aggregate
from eval.record import Args as RecordArgs
from eval.record import main as record
from eval.runs import CLASSIFIER, load_runs

ARCHITECTURES = ("resnet_mini", "vit_mini")
METHODS = ("vanilla", "camal", "rrr")
SEEDS = (1, 2, 3, 4, 5)
SPLITS = ("val", "test_balanced", "test_shifted")
REPS = 200
# per method, the centre of each metric (every split); the noise is drawn per run
CENTRES = {
    "relevance_mass": {"vanilla": 0.30, "camal": 0.60, "rrr": 0.35},
    "deletion_auc": {"vanilla": 0.40, "camal": 0.25, "rrr": 0.35},
    "insertion_auc": {"vanilla": 0.60, "camal": 0.70, "rrr": 0.62},
}
ACCURACY = {  # CAMAL better than vanilla on test_balanced, worse on test_shifted
    "val": {"vanilla": 0.90, "camal": 0.90, "rrr": 0.89},
    "test_balanced": {"vanilla": 0.80, "camal": 0.85, "rrr": 0.81},
    "test_shifted": {"vanilla": 0.70, "camal": 0.60, "rrr": 0.69},
}


def split_metrics(architecture: str, method: str, seed: int, split: str) -> dict:
    """The known numbers of one run on one split, as eval/classifier.py writes them."""
    rng = np.random.default_rng(zlib.crc32(f"{architecture} {method} {seed} {split}".encode()))
    noise = lambda: float(rng.normal(0, 0.02))  # noqa: E731
    return {"images": 200, "images_with_mask": 180, "images_zero_map": 3, "accuracy": ACCURACY[split][method] + noise(),
            "images_per_s": 1000.0 + 50 * noise(),
            "relevance_mass": CENTRES["relevance_mass"][method] + noise(), "relevance_mass_chance": 0.1,
            "relevance_rank": 0.6 + noise(), "relevance_rank_chance": 0.5,
            "pointing_game": 0.5 + noise(), "pointing_game_chance": 0.1,
            "deletion_auc": CENTRES["deletion_auc"][method] + noise(), "deletion_auc_random": 0.5,
            "insertion_auc": CENTRES["insertion_auc"][method] + noise(), "insertion_auc_random": 0.5,
            "occlusion_drop": 0.2 + noise(), "occlusion_drop_random": 0.05}


def write_classifier_record(folder: Path, architecture: str, method: str, seed: int, epochs: int = 3,
                            evaluated: bool = True) -> Path:
    folder.mkdir(parents=True)
    config = dict(model=architecture, method=method, seed=seed, epochs=epochs, data="data/doom_objects",
                  image_size=64, classes=["a", "b"], grid=[2, 2])
    (folder / CONFIG).write_text(json.dumps(config))
    write_curves(folder, [{"epoch": e, "images_seen": 100 * e, "train_loss": 1 / e, "val_accuracy": 0.5}
                          for e in range(1, epochs + 1)])
    if evaluated:
        splits = {split: split_metrics(architecture, method, seed, split) for split in SPLITS}
        (folder / CLASSIFIER_EVAL).write_text(json.dumps(dict(model=architecture, method=method, seed=seed,
                                                              splits=splits)))
    return folder


def classifier_study(root: Path) -> Path:
    for architecture in ARCHITECTURES:
        for method in METHODS:
            for seed in SEEDS:
                write_classifier_record(root / f"{architecture}__{method}__{seed}", architecture, method, seed)
    return root


def known(metric: str, architecture: str, method: str, split: str) -> np.ndarray:
    """The metric's values over the seeds, from the numbers written."""
    return np.array([split_metrics(architecture, method, seed, split)[metric] for seed in SEEDS])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = classifier_study(tmp_path_factory.mktemp("records") / "cls")
    out = tmp_path_factory.mktemp("aggregate")
    return dict(root=root, out=out)


@pytest.fixture(scope="module")
def aggregated(study):
    aggregate(AggregateArgs(runs_dir=str(study["root"]), out=str(study["out"]), reps=REPS))
    return pd.read_csv(study["out"] / "aggregate.csv")


def test_a_classifier_record_is_a_run_with_the_architecture_as_scenario_and_split_metric_keys(study):
    runs = load_runs(study["root"])
    assert len(runs) == len(ARCHITECTURES) * len(METHODS) * len(SEEDS)
    run = next(r for r in runs if r.env == "vit_mini" and r.method == "camal" and r.seed == 3)
    assert run.paradigm == CLASSIFIER and run.total_timesteps == 3 and run.splits == SPLITS
    assert run.evaluation["test_balanced_relevance_mass"] == split_metrics("vit_mini", "camal", 3,
                                                                           "test_balanced")["relevance_mass"]
    assert {"val_accuracy", "test_shifted_accuracy", "val_images_per_s"} <= set(run.evaluation)
    counts = ("_images", "_images_with_mask", "_images_zero_map")
    assert not any(key.endswith(counts) for key in run.evaluation)  # counts, not metrics


def test_aggregate_gives_the_iqm_over_seeds_per_architecture_and_over_architectures_x_seeds(aggregated, study):
    iqm = aggregated[aggregated.metric == "IQM"]
    for quantity, split, metric in (("test_balanced_relevance_mass", "test_balanced", "relevance_mass"),
                                    ("val_accuracy", "val", "accuracy"),
                                    ("test_shifted_deletion_auc", "test_shifted", "deletion_auc")):
        for method in METHODS:
            for architecture in ARCHITECTURES:
                row = iqm[(iqm.quantity == quantity) & (iqm.method == method) & (iqm.scenario == architecture)]
                assert row.point.item() == pytest.approx(trim_mean(known(metric, architecture, method, split), 0.25))
                assert row.ci_low.item() <= row.point.item() <= row.ci_high.item()
            across = iqm[(iqm.quantity == quantity) & (iqm.method == method) & iqm.scenario.isna()]
            pooled = np.concatenate([known(metric, a, method, split) for a in ARCHITECTURES])
            assert across.point.item() == pytest.approx(trim_mean(pooled, 0.25))
    assert not aggregated.quantity.isin(["normalised_score", "final_return", "normalised_score_curve"]).any()
    assert {"metrics_val.png", "metrics_test_balanced.png", "p_values.png", "paired_p_values.png"} <= {
        p.name for p in study["out"].iterdir()}


def test_aggregate_says_once_that_classifier_runs_have_no_return_curves(study, tmp_path, capsys):
    aggregate(AggregateArgs(runs_dir=str(study["root"]), out=str(tmp_path), reps=20))
    assert capsys.readouterr().out.count("no return curves") == 1


def test_the_paired_p_value_is_scipys_ttest_rel_over_the_seeds(aggregated):
    tests = aggregated[aggregated.quantity == "test_balanced_accuracy"]
    for architecture in ARCHITECTURES:
        camal = known("accuracy", architecture, "camal", "test_balanced")
        for method in ("vanilla", "rrr"):
            other = known("accuracy", architecture, method, "test_balanced")
            here = tests[(tests.scenario == architecture) & (tests.method == method)]
            paired = here[here.metric == "paired_p_camal_vs"]
            assert paired.point.item() == pytest.approx(ttest_rel(camal, other).pvalue)
            assert paired.n.item() == "5 pairs"
            welch = here[here.metric == "welch_p_camal_vs"].point.item()
            assert welch == pytest.approx(ttest_ind(camal, other, equal_var=False).pvalue)
    across = tests[tests.metric == "permutation_p_camal_vs"]
    assert set(across.method) == {"vanilla", "rrr"} and across.scenario.isna().all()


def dl_report(study) -> tuple[str, dict[str, list[str]]]:
    text = "\n".join(tables.results_block(load_runs(study["root"]), tables.Options(reps=REPS), "figures"))
    claims = text.split("#### The paper's claims, here")[1]
    rows = [line.strip("| ").split(" | ") for line in claims.splitlines() if line.startswith("| ")]
    assert rows[0] == ["claim", *ARCHITECTURES, "all architectures"]
    return text, {cells[0]: cells[1:] for cells in rows[1:]}


def test_a_claim_the_numbers_make_true_holds_and_one_they_make_false_does_not(study):
    text, claims = dl_report(study)
    for cell in claims["alignment gain over vanilla (relevance mass, test_balanced)"]:
        assert cell.startswith("**yes**")
    for cell in claims["accuracy on test_shifted better than vanilla"]:  # CAMAL's is lower there
        assert cell.startswith("**no**: reversed")
    assert claims["accuracy on test_balanced better than vanilla"][-1].startswith("**yes**")
    assert claims["alignment needs the true masks (vs random masks)"] == ["not run"] * 3
    # the per-architecture verdict is the paired t-test; the relative change is of the means tested
    resnet = claims["faithfulness gain over RRR (deletion, test_balanced; the paper: over 35%)"][0]
    gain = {m: 0.5 - known("deletion_auc", "resnet_mini", m, "test_balanced") for m in ("camal", "rrr")}
    relative = (gain["camal"].mean() - gain["rrr"].mean()) / abs(gain["rrr"].mean())
    assert resnet.startswith("**yes**") and f"{relative:+.0%} relative, n=5 pairs)" in resnet
    section = text.split("#### resnet_mini")[1].split("####")[0]
    assert section.strip().startswith("<details><summary>every metric on resnet_mini</summary>")  # long: folded
    assert "<details>" not in text.split("#### All architectures")[1]  # the table across them opens the page
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert table[0] == ("| metric | vanilla | camal | rrr | Welch p vs vanilla | paired p vs vanilla | "
                        "Welch p vs rrr | paired p vs rrr |")
    row = next(line for line in table if line.startswith("| test_shifted: accuracy |")).split(" | ")
    p = ttest_rel(known("accuracy", "resnet_mini", "camal", "test_shifted"),
                  known("accuracy", "resnet_mini", "vanilla", "test_shifted")).pvalue
    assert row[5] == tables.fmt_p(p)


def test_a_folder_mixing_rl_and_classifier_runs_is_refused_in_one_line(tmp_path):
    classifier = write_classifier_record(tmp_path / "mixed" / "resnet_mini__camal__1", "resnet_mini", "camal", 1)
    rl = tmp_path / "mixed" / "basic__camal__1"
    rl.mkdir()
    (rl / CONFIG).write_text(json.dumps(dict(env="basic", method="camal", seed=1, total_timesteps=400)))
    (rl / "returns.csv").write_text("step,return\n200,1.0\n400,2.0\n")
    message = refusal(aggregate, AggregateArgs(runs_dir=str(tmp_path / "mixed"), out=str(tmp_path / "out"), reps=10))
    assert "mixes RL runs" in message and str(rl) in message and str(classifier) in message
    assert not (tmp_path / "out").exists()


def run_report(*flags, cwd):
    return run_python(ROOT / "eval" / "report.py", *flags, cwd=cwd,
                      env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_report_writes_the_dl_block_beside_an_rl_block_and_check_catches_an_edit(tmp_path):
    classifier_study(tmp_path / "results" / "cls")
    begin, end = tables.markers(tables.block_name("results/cls", CLASSIFIER))
    assert (begin, end) == ("<!-- report:results/cls:dl:begin -->", "<!-- report:results/cls:dl:end -->")
    rl_begin, rl_end = tables.markers("results/cls")  # an RL block's markers for the same name: left alone
    page = tmp_path / "results.md"
    rl_part = f"# Results\n{rl_begin}\nRL table, kept\n{rl_end}\n"
    page.write_text(f"{rl_part}## Classifiers\n{begin}\nstale\n{end}\nafter\n")
    flags = ("--reps", "300", "--figures", "figures")
    written = run_report("results/cls", "--readme", "results.md", *flags, cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    text = page.read_text()
    assert text.startswith(f"{rl_part}## Classifiers\n{begin}\n") and text.endswith(f"{end}\nafter\n")
    block = text.split(begin)[1]
    assert "stale" not in block and "#### resnet_mini" in block and "#### All architectures" in block
    assert "python eval/report.py results/cls --readme results.md;" in block
    assert (tmp_path / "figures" / "all_methods" / "metrics_test_balanced.png").is_file()
    assert run_report("results/cls", "--check", "results.md", *flags, cwd=tmp_path).returncode == 0
    page.write_text(text.replace("**yes**", "**no**", 1))
    checked = run_report("results/cls", "--check", "results.md", *flags, cwd=tmp_path)
    assert checked.returncode == 1 and "is not the output of eval/report.py" in checked.stderr
    only_rl = tmp_path / "rl_only.md"
    only_rl.write_text(rl_part)
    refused = run_report("results/cls", "--check", "rl_only.md", *flags, cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and begin in refused.stderr


def make_images(root: Path, per_class: int = 12, size: int = 32) -> Path:
    """Two classes, a red or a blue square (the object and its mask) on grey noise; train, val and test_balanced."""
    from vision.folder import write_sample, write_split

    rng = np.random.default_rng(0)
    splits = {"train": [], "val": [], "test_balanced": []}
    for label, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        for index in range(per_class):
            image = rng.integers(90, 150, size=(size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), dtype=bool)
            row, col = rng.integers(0, size - 10, size=2)
            mask[row:row + 10, col:col + 10] = True
            image[mask] = colour
            split = "train" if index < per_class // 2 else ("val" if index % 2 else "test_balanced")
            splits[split].append(write_sample(root, f"class{label}", f"{index:03d}", image, mask))
    for split, paths in splits.items():
        write_split(root, split, paths)
    return root


@pytest.mark.slow
def test_record_exports_a_trained_and_evaluated_classifier_run(tmp_path, capsys):
    data = make_images(tmp_path / "squares")
    trained = run_python(ROOT / "agents" / "camal_classifier.py", "--data", data, "--runs-dir", tmp_path / "runs",
                         "--model", "resnet_mini", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
                         "--no-cuda", "--image-every", "0", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    results = tmp_path / "results"

    # not evaluated yet: --new-only lists it, a plain export refuses it
    record(RecordArgs(runs=[str(run_dir)], study="cls", results_dir=str(results), new_only=True))
    assert f"{run_dir}: no {CLASSIFIER_EVAL} yet" in capsys.readouterr().out and not (results / "cls").exists()
    assert "not evaluated" in refusal(record, RecordArgs(runs=[str(run_dir)], study="cls", results_dir=str(results)))

    evaluated = run_python(ROOT / "eval" / "classifier.py", run_dir, "--no-cuda", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    longer = tmp_path / "runs_longer" / run_dir.name  # the same run, configured for 2 epochs: unfinished
    shutil.copytree(run_dir, longer)
    config = json.loads((longer / CONFIG).read_text())
    (longer / CONFIG).write_text(json.dumps(dict(config, epochs=2)))
    assert "unfinished" in refusal(record, RecordArgs(runs=[str(longer)], study="cls", results_dir=str(results)))

    record(RecordArgs(runs=[str(run_dir)], study="cls", results_dir=str(results), new_only=True))
    record_dir = results / "cls" / run_dir.name
    assert sorted(p.name for p in record_dir.iterdir()) == sorted([CONFIG, CURVES, CLASSIFIER_EVAL])
    assert read_curves(record_dir) == read_curves(run_dir) and len(read_curves(record_dir)) == 1
    assert (record_dir / CLASSIFIER_EVAL).read_text() == (run_dir / CLASSIFIER_EVAL).read_text()
    (run,) = load_runs(results / "cls")
    assert run.paradigm == CLASSIFIER and run.env == "resnet_mini" and run.method == "camal"
    assert {"val_accuracy", "test_balanced_accuracy", "test_balanced_relevance_mass"} <= set(run.evaluation)
    record(RecordArgs(runs=[str(run_dir)], study="cls", results_dir=str(results), new_only=True))
    assert f"{run_dir}: has a record" in capsys.readouterr().out
