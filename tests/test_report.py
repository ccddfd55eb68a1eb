"""eval/report.py: the README's results block is regenerated from run records alone, with verdicts."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_python
from eval import stats, tables
from eval.runs import load_runs

SEEDS = [1, 2, 3, 4, 5]


def write_record(folder: Path, env: str, method: str, seed: int, mean_return: float, means: dict, shift: dict):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dict(env=env, method=method, seed=seed, total_timesteps=4096)))
    steps = np.arange(200, 4097, 200)
    (folder / "returns.csv").write_text("step,return\n" + "".join(f"{s},{mean_return}\n" for s in steps))
    (folder / "attention_eval.json").write_text(json.dumps({"means": means}))
    (folder / "shift_eval.json").write_text(json.dumps({"means": shift}))


def fake_study(root: Path) -> Path:
    """CAMAL's relevance mass far above vanilla's on both scenarios; pointing game drawn from one distribution."""
    rng = np.random.default_rng(0)
    results = root / "results" / "fake"
    for env in ("basic", "defend_the_center"):
        for method in ("vanilla", "camal", "rrr") if env == "basic" else ("vanilla", "camal"):
            for seed in SEEDS:
                means = dict(relevance_mass=(0.5 if method == "camal" else 0.1) + rng.normal(0, 0.01),
                             relevance_mass_chance=0.05, relevance_rank=0.3, pointing_game=rng.uniform(0.2, 0.4),
                             deletion_auc=0.4, deletion_auc_random=0.5, insertion_auc=0.6, insertion_auc_random=0.5,
                             occlusion_drop=0.1, occlusion_drop_random=0.02)
                write_record(results / f"{env}__{method}__{seed}", env, method, seed, 50.0 + seed,
                             means, dict(shift_return_ratio=0.8, shift_action_agreement=0.9))
    return results


def run_report(*flags, cwd):
    return run_python(ROOT / "eval" / "report.py", *flags, cwd=cwd,
                      env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_report_writes_the_readme_block_and_check_catches_an_edit(tmp_path):
    fake_study(tmp_path)
    readme = tmp_path / "README.md"
    begin, end = tables.markers("results/fake")
    readme.write_text(f"# Results\n\nprose kept\n{begin}\nold table\n{end}\nafter\n")
    assert run_report("results/fake", "--check", "README.md", "--reps", "500", cwd=tmp_path).returncode == 1

    written = run_report("results/fake", "--readme", "README.md", "--reps", "500", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    text = readme.read_text()
    assert text.startswith("# Results\n\nprose kept\n") and text.endswith(f"{end}\nafter\n")
    assert "old table" not in text and "#### basic" in text and "#### All scenarios" in text
    assert "rrr (1 scenarios)" in text  # across scenarios each method is aggregated over the scenarios it ran
    assert (tmp_path / "docs/results/fake/all_methods/interval_estimates.png").is_file()
    assert (tmp_path / "docs/results/fake/camal_vs_vanilla/p_values.png").is_file()

    claims_table = text.split("#### The paper's claims, here")[1].split(end)[0]
    claims = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in claims_table.splitlines()
              if line.startswith("| ")}
    assert list(claims)[0] == "claim" and "| claim | basic | defend_the_center | all scenarios |" in claims_table
    basic, center, across = (cell.strip(" |") for cell in claims["alignment gain over vanilla"])
    assert basic.startswith("**yes**") and center.startswith("**yes**") and across.startswith("**yes**")
    assert claims["pointing gain over vanilla"][0].startswith("not settled")
    assert claims["return not worse than vanilla"][0].startswith("yes")
    assert claims["alignment gain over RRR"][1].strip() == "not run"  # no RRR on defend_the_center

    assert run_report("results/fake", "--check", "README.md", "--reps", "500", cwd=tmp_path).returncode == 0
    readme.write_text(text.replace("**yes**", "**no**", 1))
    checked = run_report("results/fake", "--check", "README.md", "--reps", "500", cwd=tmp_path)
    assert checked.returncode == 1 and "is not the output of eval/report.py" in checked.stderr


def test_an_unsettled_claim_says_when_the_observed_difference_is_the_opposite_of_the_claim(tmp_path):
    results = fake_study(tmp_path)
    kept = {  # return kept under the shift: CAMAL a little above vanilla on basic, a little below on the other
        "basic": {"camal": [0.60, 0.75, 0.70, 0.65, 0.80], "vanilla": [0.50, 0.70, 0.60, 0.80, 0.55]},
        "defend_the_center": {"camal": [0.50, 0.70, 0.60, 0.80, 0.55], "vanilla": [0.60, 0.75, 0.70, 0.65, 0.80]}}
    for env, by_method in kept.items():
        for method, ratios in by_method.items():
            for seed, ratio in zip(SEEDS, ratios):
                shift = dict(shift_return_ratio=ratio, shift_action_agreement=0.9)
                (results / f"{env}__{method}__{seed}" / "shift_eval.json").write_text(json.dumps({"means": shift}))
    runs = load_runs(results)
    args = tables.Options(reps=200)
    values = {id(r): tables.run_values(r, args.final_fraction) for r in runs}
    claim = ("shift_return_ratio", "vanilla", "greater")
    basic = tables.verdict(runs, values, *claim, ["basic"], args)
    center = tables.verdict(runs, values, *claim, ["defend_the_center"], args)
    assert basic.startswith("not settled (p=") and "seeds each for 80% power" in basic
    assert center.startswith("not settled, leaning reversed (p=")


@pytest.mark.slow
def test_a_readme_without_markers_is_refused_before_any_work(tmp_path):
    fake_study(tmp_path)
    (tmp_path / "README.md").write_text("# no markers\n")
    refused = run_report("results/fake", "--readme", "README.md", cwd=tmp_path)
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1 and "needs one line" in refused.stderr
    assert (tmp_path / "README.md").read_text() == "# no markers\n" and not (tmp_path / "docs").exists()


def test_permutation_test_and_power():
    same = [np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 7.0])]
    assert stats.stratified_permutation_p(same, [a.copy() for a in same], 2000, np.random.default_rng(0)) == 1.0
    apart = [np.array([10.0, 11, 12, 13, 14]), np.array([20.0, 21, 22, 23, 24])]
    below = [a - 9 for a in apart]  # apart from the other method's values in both scenarios
    assert stats.stratified_permutation_p(apart, below, 5000, np.random.default_rng(0)) < 0.01
    y = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    x = y + 0.8 * y.std(ddof=1)  # Cohen's d = 0.8: the textbook 26 per group for 80% power at alpha 0.05
    assert stats.seeds_for_power(x, y, 0.05) == 26
    assert stats.seeds_for_power(x, y, 0.01) > 26 and stats.seeds_for_power(y, y, 0.05) is None


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "results" / "paper").is_dir(), reason="no records of the paper study yet")
def test_the_committed_results_pages_are_the_reports_output():
    """docs/results.md (the results block) and README.md (its headline), whichever of them hold markers."""
    pages = [page for page in ("docs/results.md", "README.md")
             if (ROOT / page).is_file() and "<!-- report:results/paper:" in (ROOT / page).read_text()]
    assert pages
    checked = run_report("results/paper", "--check", *pages, cwd=ROOT)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("study", ["basic_eval50", "paper_dl"])
def test_the_committed_sections_of_other_studies_are_the_reports_output(study):
    checked = run_report(f"results/{study}", "--check", "docs/results.md", cwd=ROOT)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.slow
def test_one_report_fills_the_results_block_and_the_headline_of_several_files(tmp_path):
    fake_study(tmp_path)
    begin, end = tables.markers("results/fake")
    headline_begin, headline_end = tables.markers("results/fake", tables.HEADLINE)
    assert (headline_begin, headline_end) == ("<!-- report:results/fake:headline:begin -->",
                                              "<!-- report:results/fake:headline:end -->")
    (tmp_path / "docs").mkdir()
    page, readme, index = tmp_path / "docs" / "results.md", tmp_path / "README.md", tmp_path / "docs" / "index.md"
    page.write_text(f"# Results\n{begin}\nstale table\n{end}\nclaim by claim\n")
    readme.write_text(f"# Front page\n{headline_begin}\nstale table\n{headline_end}\n## Layout\n")
    index.write_text(f"{headline_begin}\n{headline_end}\n{begin}\n{end}\n")  # both blocks in one file
    written = run_report("results/fake", "--readme", "README.md", "docs/results.md", "docs/index.md", "--reps", "300",
                         cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert page.read_text().startswith(f"# Results\n{begin}\n")
    assert page.read_text().endswith(f"{end}\nclaim by claim\n")
    assert readme.read_text().endswith(f"{headline_end}\n## Layout\n")
    full = page.read_text().split(begin)[1].split(end)[0]
    headline = readme.read_text().split(headline_begin)[1].split(headline_end)[0]
    assert "python eval/report.py results/fake --readme docs/results.md;" in full
    assert "python eval/report.py results/fake --readme README.md;" in headline
    across = full.split("#### All scenarios")[1].split("#### The paper's claims")[0]
    assert "| metric | vanilla | camal | rrr (1 scenarios) |" in across and across in headline
    assert "#### basic" in full and "#### basic" not in headline and "stale table" not in full + headline
    claim_rows = [line for line in full.split("#### The paper's claims, here")[1].splitlines() if line.startswith("| ")]
    headline_claims = headline.split("#### The paper's claims, across scenarios")[1]
    assert "| claim | all scenarios |" in headline_claims
    for row in claim_rows[2:]:  # each claim with the verdict of the full table's last column, across scenarios
        cells = row.strip("| ").split(" | ")
        assert f"| {cells[0]} | {cells[-1]} |" in headline_claims
    assert headline.rstrip().endswith("the figures: [docs/results.md](docs/results.md).")
    both = index.read_text()
    assert both.split(headline_begin)[1].split(headline_end)[0].rstrip().endswith("[results.md](results.md).")
    assert both.split(begin)[1].split(end)[0].replace("docs/index.md", "docs/results.md") == full

    files = ["README.md", "docs/results.md", "docs/index.md"]
    assert run_report("results/fake", "--check", *files, "--reps", "300", cwd=tmp_path).returncode == 0
    readme.write_text(readme.read_text().replace("**yes**", "**no**", 1))
    checked = run_report("results/fake", "--check", *files, "--reps", "300", cwd=tmp_path)
    assert checked.returncode == 1 and "results block of README.md is not the output" in checked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("text, expected", [
    ("# no markers\n", "needs one line '<!-- report:results/fake:begin -->'"),
    ("<!-- report:results/fake:headline:begin -->\nno end\n", "around the headline"),
    ("<!-- report:results/fake:end -->\n<!-- report:results/fake:begin -->\n", "around the results block"),
    ("<!-- report:results/fake:begin -->\n<!-- report:results/fake:headline:begin -->\n"
     "<!-- report:results/fake:headline:end -->\n<!-- report:results/fake:end -->\n", "must not enclose"),
])
def test_a_file_without_a_well_formed_marker_pair_is_refused_before_anything_is_written(tmp_path, text, expected):
    fake_study(tmp_path)
    (tmp_path / "README.md").write_text("<!-- report:results/fake:begin -->\n<!-- report:results/fake:end -->\n")
    (tmp_path / "bad.md").write_text(text)
    refused = run_report("results/fake", "--readme", "README.md", "bad.md", cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and expected in refused.stderr
    assert refused.stderr.startswith("error: bad.md")
    assert (tmp_path / "bad.md").read_text() == text and not (tmp_path / "docs").exists()
    assert (tmp_path / "README.md").read_text().count("\n") == 2  # the good file is not written either


def test_figures_of_a_study_in_progress_are_over_the_scenarios_of_the_tables_across_scenarios(tmp_path):
    import shutil

    results = fake_study(tmp_path)
    runs = load_runs(results)
    args = tables.Options()
    assert tables.figure_parts(args, runs) == [
        ("all_methods", ["basic"], ["camal", "rrr", "vanilla"], SEEDS),
        ("camal_vs_vanilla", ["basic", "defend_the_center"], ["vanilla", "camal"], SEEDS)]
    shutil.rmtree(results / "basic__camal__5")  # camal's seed 5 on basic still training
    runs = load_runs(results)
    assert {r.env for r in tables.complete_runs(runs, "camal")[0]} == {"defend_the_center"}
    # basic is left out of the figures as of the tables across scenarios, not drawn over fewer seeds
    assert tables.figure_parts(args, runs) == [
        ("camal_vs_vanilla", ["defend_the_center"], ["vanilla", "camal"], SEEDS)]


def test_across_scenarios_leaves_out_a_scenario_where_the_reference_is_in_progress(tmp_path):
    import shutil

    results = fake_study(tmp_path)
    runs = load_runs(results)
    # RRR never ran on defend_the_center: that scenario is complete without it
    assert tables.complete_runs(runs, "camal") == (runs, "")
    for seed in (2, 3, 4, 5):  # CAMAL's defend_the_center runs: only seed 1 finished so far
        shutil.rmtree(results / f"defend_the_center__camal__{seed}")
    runs = load_runs(results)
    kept, left_out = tables.complete_runs(runs, "camal")
    assert {r.env for r in kept} == {"basic"}  # vanilla's complete runs there wait for CAMAL's
    assert left_out.endswith("has all its seeds there: camal, vanilla on defend_the_center.")
    lines = tables.results_block(runs, tables.Options(reps=200), "figures")
    text = "\n".join(lines)
    across = text.split("#### All scenarios")[1].split("#### The paper's claims")[0]
    assert left_out in across
    assert "n/a" not in across  # vanilla's 5 + 1 seeds no longer leave its IQM without a table
    claims = text.split("#### The paper's claims, here")[1]
    alignment = next(line for line in claims.splitlines() if line.startswith("| alignment gain over vanilla"))
    assert alignment.endswith("(p<0.001, n=5 vs 5) |")  # the last column over basic alone


def test_a_control_still_in_progress_leaves_only_its_own_runs_out_of_the_statistics_across_scenarios(tmp_path):
    results = fake_study(tmp_path)
    means = dict(relevance_mass=0.1, relevance_mass_chance=0.05, relevance_rank=0.3, pointing_game=0.3)
    write_record(results / "defend_the_center__rrr__1", "defend_the_center", "rrr", 1, 50.0, means,
                 dict(shift_return_ratio=0.8, shift_action_agreement=0.9))  # RRR's first seed there, of five
    runs = load_runs(results)
    kept, left_out = tables.complete_runs(runs, "camal")
    assert {(r.env, r.method, r.seed) for r in runs} - {(r.env, r.method, r.seed) for r in kept} == {
        ("defend_the_center", "rrr", 1)}
    assert left_out.endswith(": rrr on defend_the_center.")
    text = "\n".join(tables.results_block(runs, tables.Options(reps=200), "figures"))
    across = text.split("#### All scenarios")[1].split("#### The paper's claims")[0]
    assert "| metric | vanilla | camal | rrr (1 scenarios) |" in across  # vanilla and CAMAL over both scenarios
    claims = text.split("#### The paper's claims, here")[1].splitlines()
    over_vanilla = next(line for line in claims if line.startswith("| alignment gain over vanilla"))
    over_rrr = next(line for line in claims if line.startswith("| alignment gain over RRR"))
    assert over_vanilla.split(" | ")[-1].startswith("**yes**") and over_vanilla.endswith(", n=10 vs 10) |")
    assert over_rrr.split(" | ")[-1].startswith("**yes**") and over_rrr.endswith(", n=5 vs 5) |")
    args = tables.Options()
    assert tables.figure_parts(args, runs) == [
        ("all_methods", ["basic"], ["camal", "rrr", "vanilla"], SEEDS),
        ("camal_vs_vanilla", ["basic", "defend_the_center"], ["vanilla", "camal"], SEEDS)]


def claim_verdicts(text: str) -> dict[str, list[str]]:
    table = text.split("#### The paper's claims, here")[1]
    rows = [line.strip("| ").split(" | ") for line in table.splitlines() if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in rows[2:]}


def test_the_controls_claims_read_not_run_or_not_evaluated_until_their_records_exist(tmp_path):
    """The entropy-regulariser and uniform-mask controls and the dilated-target occlusion: no records or no key
    yet gives cells that say so; once basic has them, verdicts there and across scenarios."""
    results = fake_study(tmp_path)
    entropy = "alignment needs a mask-specific loss (vs the entropy regulariser)"
    uniform = "alignment needs the true masks (vs uniform masks)"
    dilated = "target occlusion, dilated to the Grad-CAM cell size, matters more than for vanilla"
    verdicts = claim_verdicts("\n".join(tables.results_block(load_runs(results), tables.Options(reps=200), "f")))
    assert verdicts[entropy] == verdicts[uniform] == ["not run"] * 3
    assert verdicts[dilated] == ["not evaluated"] * 3  # vanilla and CAMAL ran, without the dilated occlusion

    for seed in SEEDS:
        for method in ("entropy", "camal-uniform"):
            means = dict(relevance_mass=0.1 + 0.01 * seed, relevance_mass_chance=0.05, pointing_game=0.3)
            write_record(results / f"basic__{method}__{seed}", "basic", method, seed, 50.0, means,
                         dict(shift_return_ratio=0.8, shift_action_agreement=0.9))
        for method, drop in (("camal", 0.3), ("vanilla", 0.05)):
            evaluation = results / f"basic__{method}__{seed}" / "attention_eval.json"
            means = json.loads(evaluation.read_text())["means"]
            means.update(occlusion_drop_dilated=drop + 0.01 * seed, occlusion_drop_dilated_random=0.02)
            evaluation.write_text(json.dumps({"means": means}))
    text = "\n".join(tables.results_block(load_runs(results), tables.Options(reps=200), "f"))
    verdicts = claim_verdicts(text)
    for claim in (entropy, uniform):
        basic, center, across = verdicts[claim]
        assert basic.startswith("**yes**") and center == "not run" and across.startswith("**yes**")
        assert across.endswith("n=5 vs 5)")  # across scenarios over basic, the one scenario both ran
    basic, center, across = verdicts[dilated]
    assert basic.startswith("**yes**") and center == "not evaluated" and across.endswith("n=5 vs 5)")
    basic_table = text.split("#### basic")[1].split("####")[0]
    gain = next(line for line in basic_table.splitlines() if line.startswith("| occlusion drop, dilated target"))
    assert gain.split(" | ")[2].startswith("0.310 [")  # CAMAL's gains 0.29 ... 0.33: their IQM, the middle three


def test_a_claim_whose_control_has_only_all_zero_maps_reads_undefined_not_unevaluated(tmp_path):
    """Entropy runs whose every Grad-CAM is all zero have NaN alignment: the cell says so, instead of
    "not evaluated" (the metric was computed; it has no value)."""
    results = fake_study(tmp_path)
    for seed in SEEDS:
        write_record(results / f"basic__entropy__{seed}", "basic", "entropy", seed, 50.0,
                     dict(relevance_mass=float("nan"), relevance_mass_chance=float("nan"), deletion_auc=0.5,
                          deletion_auc_random=0.5), dict(shift_return_ratio=0.8))
    with pytest.warns(UserWarning, match="has no value for relevance_mass"):
        runs = load_runs(results)
    verdicts = claim_verdicts("\n".join(tables.results_block(runs, tables.Options(reps=200), "f")))
    basic, center, across = verdicts["alignment needs a mask-specific loss (vs the entropy regulariser)"]
    assert basic == across == "undefined for entropy: no frame with a non-zero map"
    assert center == "not run"


def test_an_undefined_metric_other_than_alignment_is_not_blamed_on_all_zero_maps(tmp_path):
    """A return ratio is NaN where the unshifted return is not above 0, not where maps are all zero: its cell names
    it NaN."""
    results = fake_study(tmp_path)
    for seed in SEEDS:
        shift = json.loads((results / f"basic__vanilla__{seed}" / "shift_eval.json").read_text())
        shift["means"]["shift_return_ratio"] = float("nan")
        (results / f"basic__vanilla__{seed}" / "shift_eval.json").write_text(json.dumps(shift))
    with pytest.warns(UserWarning, match="has no value for shift_return_ratio"):
        runs = load_runs(results)
    verdicts = claim_verdicts("\n".join(tables.results_block(runs, tables.Options(reps=200), "f")))
    basic = verdicts["return under background shift holds better than vanilla's"][0]
    assert basic == "undefined for vanilla: NaN on every run"


def test_a_method_with_a_metric_undefined_on_one_seed_is_left_out_of_that_metrics_estimates_only(tmp_path):
    """A control whose seed 1 never scored above 0 has no return ratio under the shift (NaN): the stratified
    bootstrap of that metric leaves the method out, with a note; its other metrics and the others' stay."""
    from eval import estimates

    results = fake_study(tmp_path)
    for seed in SEEDS:
        ratio = float("nan") if seed == 1 else 0.8
        write_record(results / f"basic__camal-uniform__{seed}", "basic", "camal-uniform", seed, 50.0,
                     dict(relevance_mass=0.1, relevance_mass_chance=0.05), dict(shift_return_ratio=ratio))
    with pytest.warns(UserWarning, match="has no value for shift_return_ratio"):
        runs = [r for r in load_runs(results) if r.env == "basic"]
    aggregate = estimates.aggregate_runs(runs, estimates.Options(reps=200))
    assert "shift_return_ratio: 'camal-uniform' left out of its estimates (undefined for basic seed 1)" in aggregate.notes
    estimated = {(row["quantity"], row["method"]) for row in aggregate.rows if row.get("metric") == "IQM"}
    assert ("shift_return_ratio", "vanilla") in estimated and ("shift_return_ratio", "camal-uniform") not in estimated
    assert ("relevance_mass", "camal-uniform") in estimated
