"""eval/aggregate.py on synthetic runs written as real TensorBoard event files."""

import json
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from rliable import library as rly
from rliable import metrics
from scipy.stats import t as student_t
from scipy.stats import trim_mean, ttest_ind
from torch.utils.tensorboard import SummaryWriter

from conftest import exit_message, run_python
from eval.aggregate import Args, main
from eval.runs import final_return, load_runs
from eval.stats import probability_of_improvement, welch_p_value, windowed_mean_returns
from eval.record import Args as RecordArgs
from eval.record import main as record_main
from scenarios import SCENARIOS as RECORDS

METHODS = ("vanilla", "camal")
SCENARIOS = ("basic", "defend_the_center")
SEEDS = (1, 2, 3)
NORMALISATION = {env: (RECORDS[env].r_random, RECORDS[env].r_max) for env in SCENARIOS}
TOTAL_TIMESTEPS = 10_000
REPS = 200
SEED = 7


def write_run(root, env, method, seed, steps, returns, attention=None, tag="charts/episodic_return",
              total_timesteps=TOTAL_TIMESTEPS, shift=None):
    run_dir = root / f"{env}__{method}__{seed}__123"
    writer = SummaryWriter(log_dir=str(run_dir))
    for step, value in zip(steps, returns):
        writer.add_scalar(tag, value, global_step=int(step))
    writer.close()
    config = dict(env=env, method=method, seed=seed, total_timesteps=total_timesteps, exp_name=method)
    (run_dir / "config.json").write_text(json.dumps(config))
    if attention is not None:
        (run_dir / "attention_eval.json").write_text(json.dumps({"means": attention, "frames": 100}))
    if shift is not None:
        (run_dir / "shift_eval.json").write_text(json.dumps({"means": shift, "episodes": 10}))
    return run_dir


def synthetic_history(env, method, seed):
    """(steps, returns): episodes ending at irregular steps, returns rising over training."""
    rng = np.random.default_rng(zlib.crc32(f"{env} {method} {seed}".encode()))
    steps = np.sort(rng.choice(np.arange(1, TOTAL_TIMESTEPS), size=120, replace=False))
    low, high = NORMALISATION[env]
    skill = 0.6 + 0.2 * (method == "camal") + 0.1 * rng.standard_normal()
    noise = 0.05 * rng.standard_normal(len(steps))
    returns = low + (high - low) * (skill * steps / TOTAL_TIMESTEPS + noise)
    return steps, returns


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Runs of METHODS x SCENARIOS x SEEDS, aggregated once; returns the histories and the outputs."""
    root = tmp_path_factory.mktemp("runs")
    histories = {}
    for env in SCENARIOS:
        for method in METHODS:
            for seed in SEEDS:
                steps, returns = synthetic_history(env, method, seed)
                attention = {"relevance_mass": 0.3 + 0.1 * seed + 0.2 * (method == "camal"), "pointing_game": 0.5,
                             "occlusion_drop": 0.05 * seed, "occlusion_drop_random": 0.01 * seed}
                shift = {"shift_return_ratio": 0.5 + 0.1 * seed, "shift_action_agreement": 0.7}
                write_run(root / env, env, method, seed, steps, returns, attention, shift=shift)
                histories[env, method, seed] = steps, returns
    out = tmp_path_factory.mktemp("results")
    main(Args(runs_dir=str(root), out=str(out), reps=REPS, seed=SEED, curve_points=10))
    return dict(root=root, out=out, histories=histories, csv=pd.read_csv(out / "aggregate.csv"))


def expected_final_return(steps, returns, fraction=0.1):
    return returns[steps >= (1 - fraction) * steps[-1]].mean()


def normalised_matrix(study, method):
    """(seeds, scenarios) normalised final scores computed directly from the written histories."""
    return np.array([[(expected_final_return(*study["histories"][env, method, seed]) - NORMALISATION[env][0])
                      / (NORMALISATION[env][1] - NORMALISATION[env][0]) for env in SCENARIOS] for seed in SEEDS])


def aggregate_row(csv, quantity, metric, method):
    row = csv[(csv.quantity == quantity) & (csv.metric == metric) & (csv.method == method)]
    assert len(row) == 1, (quantity, metric, method)
    return row.iloc[0]


def test_final_return_is_mean_of_last_tenth_of_logged_steps(study):
    runs = load_runs(study["root"])
    assert len(runs) == len(METHODS) * len(SCENARIOS) * len(SEEDS)
    for run in runs:
        steps, returns = study["histories"][run.env, run.method, run.seed]
        np.testing.assert_array_equal(run.steps, steps)
        np.testing.assert_allclose(run.returns, returns, rtol=1e-6)  # event files store float32
        assert final_return(run, 0.1) == pytest.approx(expected_final_return(steps, returns), rel=1e-6)
        assert final_return(run, 0.25) == pytest.approx(expected_final_return(steps, returns, 0.25), rel=1e-6)
        assert run.evaluation["pointing_game"] == 0.5


def test_windowed_mean_returns_on_known_values():
    steps = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    returns = np.arange(10.0)
    values = windowed_mean_returns(steps, returns, np.array([0.05, 0.5, 1.0]), window=0.2)
    assert np.isnan(values[0])  # no episode ended by step 5
    assert values[1] == pytest.approx(np.mean([2.0, 3.0, 4.0]))  # steps 30..50
    assert values[2] == pytest.approx(np.mean([7.0, 8.0, 9.0]))  # steps 80..100


def test_per_run_scores_in_csv(study):
    csv = study["csv"]
    for (env, method, seed), (steps, returns) in study["histories"].items():
        rows = csv[(csv.metric == "run") & (csv.method == method) & (csv.scenario == env) & (csv.seed == seed)]
        raw = rows[rows.quantity == "final_return"].point.item()
        assert raw == pytest.approx(expected_final_return(steps, returns), rel=1e-6)
        normalised = rows[rows.quantity == "normalised_score"].point.item()
        low, high = NORMALISATION[env]
        assert normalised == pytest.approx((raw - low) / (high - low))


def test_point_estimates_match_direct_computation(study):
    for method in METHODS:
        x = normalised_matrix(study, method)
        expected = {"IQM": trim_mean(x.ravel(), 0.25), "mean": x.mean(),
                    # rliable's median is the median over scenarios of the mean over seeds
                    "median": np.median(x.mean(axis=0)), "optimality gap": 1 - np.minimum(x, 1).mean()}
        for metric, value in expected.items():
            row = aggregate_row(study["csv"], "normalised_score", metric, method)
            assert row.point == pytest.approx(value, rel=1e-5)


def test_intervals_match_a_direct_rliable_call(study):
    scores = {method: normalised_matrix(study, method) for method in METHODS}  # vanilla first, as in main

    def aggregates(x):
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x), metrics.aggregate_median(x),
                         metrics.aggregate_optimality_gap(x)])

    np.random.seed(SEED)
    _, intervals = rly.get_interval_estimates(scores, aggregates, reps=REPS)
    for method in METHODS:
        for i, metric in enumerate(["IQM", "mean", "median", "optimality gap"]):
            row = aggregate_row(study["csv"], "normalised_score", metric, method)
            assert row.ci_low == pytest.approx(intervals[method][0, i], rel=1e-5)
            assert row.ci_high == pytest.approx(intervals[method][1, i], rel=1e-5)
            assert row.ci_low <= row.point <= row.ci_high
        assert intervals[method][0, 0] < intervals[method][1, 0]  # a real interval, not a point


def test_probability_of_improvement_matches_rliable(study):
    camal, vanilla = normalised_matrix(study, "camal"), normalised_matrix(study, "vanilla")
    np.random.seed(SEED)
    points, intervals = rly.get_interval_estimates({"camal,vanilla": [camal, vanilla]},
                                                   metrics.probability_of_improvement, reps=REPS)
    row = aggregate_row(study["csv"], "normalised_score", "probability_of_improvement_over_vanilla", "camal")
    assert row.point == pytest.approx(metrics.probability_of_improvement(camal, vanilla))
    assert row.point == pytest.approx(float(points["camal,vanilla"]))
    assert (row.ci_low, row.ci_high) == pytest.approx(tuple(np.ravel(intervals["camal,vanilla"])))


def test_probability_of_improvement_equals_rliables_function():
    rng = np.random.default_rng(0)
    for shape_x, shape_y in (((5, 4), (5, 4)), ((3, 2), (6, 2))):
        x = rng.integers(0, 4, shape_x).astype(float)  # small integers: many ties
        y = rng.integers(0, 4, shape_y).astype(float)
        assert probability_of_improvement(x[None], y[None])[0, 0] == pytest.approx(metrics.probability_of_improvement(x, y))
    assert probability_of_improvement(x[None], x[None])[0, 0] == 0.5


def test_sample_efficiency_curve(study):
    csv = study["csv"]
    for method in METHODS:
        curve = csv[(csv.quantity == "normalised_score_curve") & (csv.method == method)].sort_values("step")
        assert len(curve) == 10
        # the last point's window is the final-score window, so it is the IQM of the final scores
        assert curve.point.iloc[-1] == pytest.approx(aggregate_row(csv, "normalised_score", "IQM", method).point)
        assert curve.step.iloc[-1] == TOTAL_TIMESTEPS
        # halfway: episodes that ended in [0.4 L, 0.5 L], L the run's last logged step
        halfway = []
        for env in SCENARIOS:
            for seed in SEEDS:
                steps, returns = study["histories"][env, method, seed]
                window = (steps >= 0.4 * steps[-1]) & (steps <= 0.5 * steps[-1])
                low, high = NORMALISATION[env]
                halfway.append((returns[window].mean() - low) / (high - low))
        assert curve.point.iloc[4] == pytest.approx(trim_mean(halfway, 0.25), rel=1e-5)
        assert np.all(curve.ci_low <= curve.point + 1e-9) and np.all(curve.point <= curve.ci_high + 1e-9)


def test_attention_metrics_aggregated(study):
    csv = study["csv"]
    for method in METHODS:
        masses = [0.3 + 0.1 * seed + 0.2 * (method == "camal") for env in SCENARIOS for seed in SEEDS]
        assert aggregate_row(csv, "relevance_mass", "IQM", method).point == pytest.approx(trim_mean(masses, 0.25))
        assert aggregate_row(csv, "relevance_mass", "mean", method).point == pytest.approx(np.mean(masses))
        assert aggregate_row(csv, "pointing_game", "median", method).point == pytest.approx(0.5)


def test_outputs_written(study, capsys):
    for name in ("interval_estimates.png", "sample_efficiency.png", "probability_of_improvement.png", "attention.png",
                 "evidence.png", "p_values.png"):
        path = study["out"] / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert path.stat().st_size > 10_000, name
    assert list(study["csv"].columns) == ["quantity", "metric", "method", "scenario", "seed", "step", "point",
                                          "ci_low", "ci_high", "n"]


def test_table_printed(tmp_path, capsys):
    steps, returns = synthetic_history("basic", "vanilla", 1)
    for method in METHODS:
        write_run(tmp_path / "runs", "basic", method, 1, steps, returns)
    main(Args(runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "out"), reps=20))
    printed = capsys.readouterr().out
    assert "normalised final score" in printed and "IQM" in printed and "camal" in printed and "vanilla" in printed


def run_main_expecting_exit(tmp_path, runs_dir):
    return exit_message(main, Args(runs_dir=str(runs_dir), out=str(tmp_path / "out"), reps=20))


def test_error_no_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    message = run_main_expecting_exit(tmp_path, tmp_path / "empty")
    assert "no runs found" in message and str(tmp_path / "empty") in message
    assert "not a folder" in run_main_expecting_exit(tmp_path, tmp_path / "missing")


def test_incomplete_folders_are_listed_and_skipped(tmp_path, capsys):
    """A refused run (config.json only), a run without returns, an unfinished run and event files without
    config.json are listed in one warning; the complete runs are aggregated."""
    steps, returns = synthetic_history("basic", "vanilla", 1)
    for method in METHODS:
        write_run(tmp_path / "runs", "basic", method, 1, steps, returns)
    no_returns = write_run(tmp_path / "runs", "basic", "vanilla", 2, steps, returns, tag="losses/value_loss")
    refused = tmp_path / "runs" / "refused"
    refused.mkdir()
    (refused / "config.json").write_text(json.dumps(dict(env="basic", method="camal", seed=3, total_timesteps=1)))
    unfinished = write_run(tmp_path / "runs", "basic", "camal", 4, steps[steps < 5000], returns[steps < 5000])
    orphan = write_run(tmp_path / "runs", "basic", "camal", 5, steps, returns)
    (orphan / "config.json").unlink()
    main(Args(runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "out"), reps=20))
    captured = capsys.readouterr()
    assert "skipped 4 folder(s)" in captured.err
    for folder, reason in ((no_returns, "charts/episodic_return"), (refused, "charts/episodic_return"),
                           (unfinished, "unfinished"), (orphan, "no config.json")):
        assert f"{folder}: " in captured.err and reason in captured.err
    csv = pd.read_csv(tmp_path / "out" / "aggregate.csv")
    runs = csv[(csv.quantity == "final_return") & (csv.metric == "run")]
    assert sorted(zip(runs.method, runs.seed)) == [("camal", 1), ("vanilla", 1)]


def test_warning_on_different_seed_sets(tmp_path, capsys):
    for method, seeds in (("vanilla", (1, 2)), ("camal", (3, 4))):
        for seed in seeds:
            write_run(tmp_path / "runs", "basic", method, seed, *synthetic_history("basic", method, seed))
    main(Args(runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "out"), reps=20))
    assert "different seed sets (camal: 3, 4; vanilla: 1, 2)" in capsys.readouterr().err


@pytest.mark.slow
def test_out_an_existing_file_is_one_line_error(tmp_path):
    """From the command line: one line on stderr, non-zero exit, nothing read or written."""
    steps, returns = synthetic_history("basic", "vanilla", 1)
    write_run(tmp_path / "runs", "basic", "vanilla", 1, steps, returns)
    (tmp_path / "taken").write_text("x")
    for out, expected in ((tmp_path / "taken", "is an existing file"), (tmp_path / "taken" / "sub", "cannot write")):
        done = run_python("eval/aggregate.py", tmp_path / "runs", "--out", out)
        assert done.returncode != 0
        assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ") and expected in done.stderr
    for bad in (["--reps", "0"], ["--final-fraction", "nan"], ["--curve-points", "-1"]):
        done = run_python("eval/aggregate.py", tmp_path / "runs", "--out", tmp_path / "new", *bad)
        assert done.returncode != 0 and done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ")
        assert not (tmp_path / "new").exists()


def test_error_unequal_seeds(tmp_path):
    for method, seeds in (("vanilla", (1, 2, 3)), ("camal", (1, 2))):
        for seed in seeds:
            write_run(tmp_path / "runs", "basic", method, seed, *synthetic_history("basic", method, seed))
    message = run_main_expecting_exit(tmp_path, tmp_path / "runs")
    assert "'camal' has 2 on 'basic'" in message and "'vanilla'" in message and "(3)" in message


def test_error_method_missing_a_scenario(tmp_path):
    for env, method in (("basic", "vanilla"), ("basic", "camal"), ("defend_the_center", "vanilla")):
        write_run(tmp_path / "runs", env, method, 1, *synthetic_history(env, method, 1))
    message = run_main_expecting_exit(tmp_path, tmp_path / "runs")
    assert "'camal' has 0 on 'defend_the_center'" in message


def test_scenario_without_constants_is_refused_naming_the_command_that_measures_them(tmp_path):
    write_run(tmp_path / "runs", "my_new_map", "vanilla", 1, *synthetic_history("basic", "vanilla", 1))
    message = run_main_expecting_exit(tmp_path, tmp_path / "runs")
    assert "my_new_map" in message and "\n" not in message
    assert "eval/random_baseline.py --env my_new_map" in message and "--normalisation" in message


def test_normalisation_file_supplies_the_constants_of_a_scenario_without_a_record(tmp_path):
    steps, returns = synthetic_history("basic", "vanilla", 1)
    write_run(tmp_path / "runs", "my_new_map", "vanilla", 1, steps, returns)
    constants = tmp_path / "normalisation.json"
    constants.write_text(json.dumps({"my_new_map": {"r_random": -100.0, "r_max": 50.0}}))
    main(Args(runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "out"), reps=REPS, normalisation=str(constants)))
    csv = pd.read_csv(tmp_path / "out" / "aggregate.csv")
    run_row = csv[(csv.quantity == "normalised_score") & (csv.metric == "run")].iloc[0]
    assert run_row.point == pytest.approx((expected_final_return(steps, returns) + 100.0) / 150.0)


def test_error_duplicate_seed(tmp_path):
    steps, returns = synthetic_history("basic", "vanilla", 1)
    write_run(tmp_path / "runs" / "a", "basic", "vanilla", 1, steps, returns)
    write_run(tmp_path / "runs" / "b", "basic", "vanilla", 1, steps, returns)
    assert "seed 1" in run_main_expecting_exit(tmp_path, tmp_path / "runs")


def test_resumed_run_keeps_only_the_resumed_history(tmp_path):
    """A resumed run (agents/ppo_camal.py --resume) writes a second event file with purge_step: episodes
    the first file logged at or after that step are dropped, not counted twice."""
    run_dir = write_run(tmp_path, "basic", "vanilla", 1, range(100, 1001, 100), [1.0] * 10, total_timesteps=1000)
    writer = SummaryWriter(log_dir=str(run_dir), purge_step=600, filename_suffix=".resumed")
    for step in range(600, 1001, 100):
        writer.add_scalar("charts/episodic_return", 2.0, global_step=step)
    writer.close()
    (run,) = load_runs(tmp_path)
    np.testing.assert_array_equal(run.steps, np.arange(100, 1001, 100))
    np.testing.assert_array_equal(run.returns, [1.0] * 5 + [2.0] * 5)
    assert final_return(run, 0.1) == 2.0


def test_welch_p_value_of_identical_and_far_apart_samples():
    sample = np.array([0.2, 0.5, 0.9])
    assert welch_p_value(sample, sample.copy()) == 1.0
    assert welch_p_value(sample, sample + 100.0) < 1e-4
    assert welch_p_value(np.array([3.0, 3.0]), np.array([3.0, 3.0])) == 1.0  # no spread, equal
    assert np.isnan(welch_p_value(sample[:1], sample))  # one seed: no test


def test_welch_p_value_with_one_sample_without_spread_is_the_one_sample_test_against_its_value_without_warning():
    spread, constant = np.array([0.04513046, 0.04514334, 0.0452]), np.full(2, 0.04511237)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's Welch warns of precision loss on the constant sample
        p = welch_p_value(spread, constant)
        assert welch_p_value(constant, spread) == p
    t = (spread.mean() - constant[0]) / (spread.std(ddof=1) / np.sqrt(len(spread)))  # Welch's t with a zero variance
    assert p == pytest.approx(2 * student_t.sf(abs(t), df=len(spread) - 1))  # and its df, n - 1


def test_p_values_in_csv(study):
    """camal (skill 0.8) vs vanilla (0.6) per scenario: Welch's t over the 3 seeds, n in the row."""
    csv = study["csv"]
    rows = csv[csv.metric == "welch_p_camal_vs"]
    assert set(rows.quantity) == {"final_return", "relevance_mass", "pointing_game", "occlusion_drop",
                                  "occlusion_drop_random", "shift_return_ratio", "shift_action_agreement"}
    for env in SCENARIOS:
        row = rows[(rows.quantity == "final_return") & (rows.scenario == env)].iloc[0]
        finals = {m: [expected_final_return(*study["histories"][env, m, seed]) for seed in SEEDS] for m in METHODS}
        assert row.method == "vanilla" and row.n == "3 vs 3"
        assert row.point == pytest.approx(ttest_ind(finals["camal"], finals["vanilla"], equal_var=False).pvalue)
    # relevance mass 0.3 + 0.1 seed (+ 0.2 for camal): equal spreads, means 0.2 apart
    mass = rows[(rows.quantity == "relevance_mass") & (rows.scenario == "basic")].point.item()
    assert mass == pytest.approx(ttest_ind([0.6, 0.7, 0.8], [0.4, 0.5, 0.6], equal_var=False).pvalue)
    assert rows[rows.quantity == "pointing_game"].point.eq(1.0).all()  # 0.5 everywhere: identical samples
    assert (study["out"] / "p_values.png").stat().st_size > 10_000


def test_evidence_metrics_aggregated(study):
    csv = study["csv"]
    ratios = [0.5 + 0.1 * seed for env in SCENARIOS for seed in SEEDS]
    assert aggregate_row(csv, "shift_return_ratio", "IQM", "camal").point == pytest.approx(trim_mean(ratios, 0.25))
    assert aggregate_row(csv, "shift_action_agreement", "mean", "vanilla").point == pytest.approx(0.7)
    assert aggregate_row(csv, "occlusion_drop", "mean", "camal").point == pytest.approx(0.1)


def test_record_round_trips_to_the_same_numbers(study, tmp_path):
    """Records exported from the run folders aggregate to exactly the run folders' CSV; each is kilobytes."""
    runs = sorted(str(p.parent) for p in study["root"].rglob("config.json"))
    record_main(RecordArgs(runs=runs, study="synthetic", results_dir=str(tmp_path / "results")))
    records = tmp_path / "results" / "synthetic"
    assert len(list(records.iterdir())) == len(runs)
    for record in records.iterdir():
        assert sorted(p.name for p in record.iterdir()) == ["attention_eval.json", "config.json", "returns.csv",
                                                           "shift_eval.json"]
        assert sum(p.stat().st_size for p in record.iterdir()) < 20_000
    out = tmp_path / "from_records"
    main(Args(runs_dir=str(records), out=str(out), reps=REPS, seed=SEED, curve_points=10))
    pd.testing.assert_frame_equal(pd.read_csv(out / "aggregate.csv"), study["csv"])


@pytest.mark.slow
def test_record_refuses_bad_input_writing_nothing(study, tmp_path):
    run = next(str(p.parent) for p in study["root"].rglob("config.json"))
    (tmp_path / "file").write_text("x")
    for args, expected in (([run, "--study", "a/b"], "--study 'a/b'"),
                           ([run, "--study", "s", "--results-dir", str(tmp_path / "file")], "cannot write into"),
                           ([str(tmp_path), "--study", "s"], "no config.json"),
                           ([run, run, "--study", "s"], "two runs named")):
        done = run_python("eval/record.py", "--results-dir", tmp_path / "results", *args)
        assert done.returncode != 0 and done.stderr.startswith("error: ") and expected in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and not (tmp_path / "results").exists()
    record_main(RecordArgs(runs=[run], study="s", results_dir=str(tmp_path / "results")))
    with pytest.raises(SystemExit, match="exists; --overwrite replaces it"):
        record_main(RecordArgs(runs=[run], study="s", results_dir=str(tmp_path / "results")))
    record_main(RecordArgs(runs=[run], study="s", results_dir=str(tmp_path / "results"), overwrite=True))


@pytest.mark.slow
@pytest.mark.parametrize("name, content, expected", [
    ("attention_eval.json", "{not json", "cannot read the per-run means"),
    ("shift_eval.json", '{"episodes": 10}', "cannot read the per-run means"),
    ("returns.csv", "a,b\n1,2\n", "columns step, return"),
])
def test_damaged_files_are_one_line_errors(tmp_path, name, content, expected):
    steps, returns = synthetic_history("basic", "vanilla", 1)
    run_dir = write_run(tmp_path / "runs", "basic", "vanilla", 1, steps, returns)
    (run_dir / name).write_text(content)
    done = run_python("eval/aggregate.py", tmp_path / "runs", "--out", tmp_path / "o")
    assert done.returncode != 0 and expected in done.stderr and str(run_dir) in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in done.stderr


def test_unfinished_runs_are_recorded_only_when_asked(tmp_path, capsys):
    """A run still training is refused by eval/record.py unless --unfinished; its record keeps the curve so far,
    and eval/aggregate.py lists it as unfinished instead of aggregating it."""
    steps, returns = synthetic_history("basic", "vanilla", 1)
    complete = write_run(tmp_path / "runs", "basic", "vanilla", 1, steps, returns)
    training = write_run(tmp_path / "runs", "basic", "vanilla", 2, steps[steps < 5000], returns[steps < 5000])
    results = tmp_path / "results"
    with pytest.raises(SystemExit, match="not a complete run"):
        record_main(RecordArgs(runs=[str(training)], study="curves", results_dir=str(results)))
    assert not results.exists()
    record_main(RecordArgs(runs=[str(complete), str(training)], study="curves", results_dir=str(results),
                           unfinished=True))
    curve = pd.read_csv(results / "curves" / training.name / "returns.csv")
    assert curve["step"].tolist() == steps[steps < 5000].tolist()
    main(Args(runs_dir=str(results / "curves"), out=str(tmp_path / "out"), reps=20))
    assert "unfinished" in capsys.readouterr().err
    csv = pd.read_csv(tmp_path / "out" / "aggregate.csv")
    assert csv[(csv.quantity == "final_return") & (csv.metric == "run")].seed.tolist() == [1]


def test_new_only_exports_the_finished_evaluated_runs_without_a_record(tmp_path, capsys):
    """A study's folder mixes runs done, training and not yet evaluated: --new-only exports the done ones once."""
    steps, returns = synthetic_history("basic", "vanilla", 1)
    evaluations = dict(attention={"relevance_mass": 0.1}, shift={"shift_return_ratio": 0.9})
    done = write_run(tmp_path / "runs", "basic", "vanilla", 1, steps, returns, **evaluations)
    training = write_run(tmp_path / "runs", "basic", "vanilla", 2, steps[steps < 5000], returns[steps < 5000],
                         **evaluations)
    unevaluated = write_run(tmp_path / "runs", "basic", "vanilla", 3, steps, returns, attention={"relevance_mass": 0.1})
    results = tmp_path / "results"
    runs = [str(done), str(training), str(unevaluated)]
    record_main(RecordArgs(runs=runs, study="s", results_dir=str(results), new_only=True))
    assert [p.name for p in (results / "s").iterdir()] == [done.name]
    printed = capsys.readouterr().out
    assert "not finished" in printed and "no shift_eval.json yet" in printed
    (results / "s" / done.name / "returns.csv").write_text("step,return\n1,2\n")  # a record is never replaced
    record_main(RecordArgs(runs=runs, study="s", results_dir=str(results), new_only=True))
    assert (results / "s" / done.name / "returns.csv").read_text() == "step,return\n1,2\n"
    assert "has a record" in capsys.readouterr().out


def test_steps_to_a_return_is_the_first_step_where_the_moving_mean_reaches_it():
    from eval.reach import first_step_reaching

    steps = np.array([10, 20, 30, 40, 50])
    returns = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    assert first_step_reaching(steps, returns, 15.0, window=2) == 30  # mean(10, 20) = 15 at the 3rd episode
    assert first_step_reaching(steps, returns, 35.0, window=2) == 50
    assert first_step_reaching(steps, returns, 36.0, window=2) is None
    assert first_step_reaching(steps[:1], returns[:1], 0.0, window=2) is None  # fewer episodes than the window


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--methods", "camall"], "results/paper has no method 'camall'; its methods: camal, camal-random, camal-uniform, entropy, rrr, vanilla"),
    (["--seeds", "9"], "results/paper has no seed 9; its seeds: 1, 2, 3, 4, 5"),
    (["--scenarios", "defend_the_line", "--methods", "rrr"],  # the study runs RRR on basic and defend_the_center
     "no run of results/paper has one of the --scenarios, one of the --methods"),
])
def test_a_selection_no_record_matches_is_refused_in_one_line_and_writes_nothing(tmp_path, flags, message):
    """The study runner and aggregate.py choose runs by one rule (eval/selection.py) and name what exists."""
    out = tmp_path / "out"
    done = run_python("eval/aggregate.py", "results/paper", "--out", out, *flags)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not out.exists()
