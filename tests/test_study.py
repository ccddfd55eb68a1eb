"""The study runner on a real Ray: a 2-node cluster on this machine, a run's worker killed mid-run,
the study run again; and its refusals of bad input."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, event_file_steps, load_study_module, open_files, run_python, scalars

STUDY_SCRIPT = ROOT / "experiments" / "study.py"
BATCH = 2 * 64
BUDGET = 16 * BATCH
TINY_STUDY = f"""
[budgets]
basic = {BUDGET}

[[runs]]
scenarios = ["basic"]
methods = ["vanilla"]
seeds = [1, 2]

[flags]
num_envs = 2
num_steps = 64
num_minibatches = 2
update_epochs = 1
save_every = 1
image_every = 0

[eval]
episodes = 1
video = false

[resources]
cpus = 1
"""




study = load_study_module()


def each_process(read) -> dict[int, object]:
    """pid -> read(its /proc folder) for every process where that is not None; processes that end or deny
    access meanwhile are left out."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                value = read(entry)
            except (OSError, IndexError):
                continue
            if value is not None:
                found[int(entry.name)] = value
    return found


def command_line(proc: Path) -> str:
    return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def processes_mentioning(text: str) -> dict[int, int]:
    """pid -> parent pid of every process whose command line contains text."""
    return each_process(lambda proc: int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                        if text in command_line(proc) else None)


def holders_of(path: Path) -> dict[int, str]:
    """pid -> command line of every process that has path open."""
    target = str(path.resolve())
    return each_process(lambda proc: command_line(proc)[:200] if target in open_files(int(proc.name)) else None)


def diagnosis(tmp_path: Path, run_root: Path) -> str:
    """What a failed kill-and-resume leaves to read: the study's output, the run's logs, who holds its lock."""
    logs = [tmp_path / "study.out", *sorted(run_root.glob("*.log"))]
    parts = [f"--- {log.name} (last 3,000 characters)\n{log.read_text()[-3000:]}" for log in logs if log.is_file()]
    parts.append(f"--- processes holding {study.LOCK}: {holders_of(run_root / study.LOCK)}")
    return "\n".join(parts)


def checkpoint_step(run_root: Path) -> int:
    try:
        checkpoint = next(run_root.glob("*/checkpoint.pt"))
        return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])
    except (StopIteration, FileNotFoundError, RuntimeError, EOFError):
        return 0


def run_study(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_python(STUDY_SCRIPT, *args, timeout=timeout)


@pytest.fixture(scope="module")
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    yield cluster
    cluster.shutdown()


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint_and_rerun_trains_nothing(two_node_cluster, tmp_path):
    study_file = tmp_path / "tiny.toml"
    study_file.write_text(TINY_STUDY)
    results = tmp_path / "results"
    victim = results / "basic__vanilla__1"
    with open(tmp_path / "study.out", "w") as out:
        driver = subprocess.Popen([sys.executable, str(STUDY_SCRIPT), str(study_file), "--address",
                                   two_node_cluster.address, "--results-dir", str(results), "--refresh", "2"],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            # once run 1 has checkpointed twice, kill -9 the Ray worker that runs it
            deadline = time.time() + 240
            while checkpoint_step(victim) < 2 * BATCH:
                assert time.time() < deadline and driver.poll() is None, (tmp_path / "study.out").read_text()
                time.sleep(0.2)
            trainers = {pid: parent for pid, parent in processes_mentioning(str(victim)).items()
                        if parent not in processes_mentioning(str(victim))}
            assert len(trainers) == 1, trainers
            worker = next(iter(trainers.values()))
            step_at_kill = checkpoint_step(victim)
            assert step_at_kill < BUDGET, "the run finished before it could be interrupted"
            os.kill(worker, signal.SIGKILL)
            try:
                code = driver.wait(timeout=300)
            except subprocess.TimeoutExpired:
                pytest.fail("the study had not finished 300 s after the kill\n" + diagnosis(tmp_path, victim))
            assert code == 0, diagnosis(tmp_path, victim)
        finally:
            if driver.poll() is None:
                driver.send_signal(signal.SIGINT)
                try:
                    driver.wait(timeout=120)
                except subprocess.TimeoutExpired:  # not left to the rest of the suite, whose process counts it spoils
                    driver.kill()
                    driver.wait()

    # both runs completed: full step count, evaluated, one run folder each
    for run_root in (victim, results / "basic__vanilla__2"):
        folders = [p.parent for p in run_root.glob("*/config.json")]
        assert len(folders) == 1
        assert checkpoint_step(run_root) == BUDGET
        assert (folders[0] / "attention_eval.json").is_file() and (folders[0] / "shift_eval.json").is_file()

    # the killed run was resumed in its folder from a checkpoint, not restarted from 0
    folder = next(victim.glob("*/config.json")).parent
    event_files = sorted(folder.glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3]))
    assert len(event_files) >= 2, "the killed run was not resumed (one tensorboard file)"
    per_file = [event_file_steps(f, "losses/value_loss") for f in event_files]
    for before, after in zip(per_file, per_file[1:]):
        assert after[0] - BATCH in before, "a resumed attempt did not continue after a checkpointed update"
        assert after[0] > step_at_kill
        # a kill between an update's log and its checkpoint repeats that one update; the resume's
        # purge_step hides its first copy from tensorboard (checked on the view below)
        assert after[0] in (before[-1], before[-1] + BATCH), "a resumed attempt skipped or repeated updates"
    kept = [step for steps, nxt in zip(per_file, per_file[1:] + [[BUDGET + 1]]) for step in steps if step < nxt[0]]
    assert kept == list(range(BATCH, BUDGET + 1, BATCH)), "steps restarted, duplicated or missing"
    shown = [step for step, _ in scalars(folder, "losses/value_loss")]
    assert len(shown) == len(set(shown)) and shown == sorted(shown) and shown[-1] == BUDGET
    assert shown == list(range(BATCH, BUDGET + 1, BATCH)), "the resumed run's tensorboard view lost or repeated a step"

    # nothing of the study outlives it
    assert processes_mentioning(str(results)) == {}

    # the finished study again: reported done, nothing trained or written
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*")}
    again = run_study(str(study_file), "--results-dir", str(results), timeout=120)
    assert again.returncode == 0, again.stderr
    assert "2 runs" in again.stdout and "2 done" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*")} == before


def test_shipped_studies_declare_their_runs():
    quick = study.load_study(str(ROOT / "experiments" / "quick.toml"))
    assert {(r.env, r.method) for r in quick.runs} == {("basic", "vanilla"), ("basic", "camal")}
    paper = study.load_study(str(ROOT / "experiments" / "paper.toml"))
    scenarios = {"basic", "defend_the_center", "defend_the_line", "health_gathering"}
    assert {r.env for r in paper.runs} == scenarios
    for env in scenarios:
        for method in ("vanilla", "camal"):
            assert sorted(r.seed for r in paper.runs if (r.env, r.method) == (env, method)) == [1, 2, 3, 4, 5]
    control_methods = ("camal-random", "rrr", "entropy", "camal-uniform")
    controls = {(r.env, r.method) for r in paper.runs if r.method in control_methods}
    assert controls == {(e, m) for e in ("basic", "defend_the_center") for m in control_methods}
    assert len(paper.runs) == 4 * 2 * 5 + 2 * 4 * 5
    rrr = next(r for r in paper.runs if r.method == "rrr")
    assert "--camal-coef" not in rrr.train_flags  # RRR runs at the trainer's tuned default (README: Choice of lambda)


def test_part_of_a_study_runs_under_the_names_of_the_whole():
    paper = study.load_study(str(ROOT / "experiments" / "paper.toml"))
    part = study.select_runs(paper, ["basic"], ["vanilla", "rrr"])
    assert {(r.env, r.method) for r in part.runs} == {("basic", "vanilla"), ("basic", "rrr")}
    assert part.name == paper.name and all(r in paper.runs for r in part.runs)
    one = study.select_runs(paper, ["defend_the_center"], ["vanilla"], [1])
    assert [(r.env, r.method, r.seed) for r in one.runs] == [("defend_the_center", "vanilla", 1)]
    for scenarios, methods, seeds, expected in (
            (["bsic"], None, None, "no scenario 'bsic'; its scenarios: basic,"),
            (["defend_the_line"], ["rrr"], None, "no run of the study has one of"),
            (None, None, [9], "no seed 9; its seeds: 1, 2, 3, 4, 5")):
        with pytest.raises(study.StudyError, match=expected):
            study.select_runs(paper, scenarios, methods, seeds)


def test_unfinished_runs_start_seed_by_seed_after_the_runs_to_resume():
    """Two cores run the first two runs handed over: a study stopped part-way then has its methods at the
    same seeds (vanilla's five seeds first would leave CAMAL nothing to be compared with)."""
    paper = study.select_runs(study.load_study(str(ROOT / "experiments" / "paper.toml")), ["basic"], ["vanilla", "camal"])
    states = {run.name: "new" for run in paper.runs}
    states.update({"basic__vanilla__1": "done", "basic__camal__1": "done", "basic__camal__3": "partial"})
    order = [run.name for run in study.start_order(paper.runs, states)]
    assert order == ["basic__camal__3", "basic__vanilla__2", "basic__camal__2", "basic__vanilla__3",
                     "basic__vanilla__4", "basic__camal__4", "basic__vanilla__5", "basic__camal__5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_STUDIES = {
    "unknown scenario": ('[budgets]\nbasic = 2048\n[[runs]]\nscenarios = ["bsic"]\nmethods = ["camal"]\nseeds = [1]\n',
                         "unknown scenario 'bsic'"),
    "unknown method": ('[budgets]\nbasic = 2048\n[[runs]]\nscenarios = ["basic"]\nmethods = ["camel"]\nseeds = [1]\n',
                       "unknown method 'camel'"),
    "malformed": ('[budgets\nbasic = 2048\n', "not a valid TOML file"),
    "unknown flag": ('[budgets]\nbasic = 2048\n[flags]\nlearning_rat = 0.1\n'
                     '[[runs]]\nscenarios = ["basic"]\nmethods = ["camal"]\nseeds = [1]\n', "unknown or runner-set flag"),
    "bad flag value": ('[budgets]\nbasic = 2048\n[flags]\nnum_envs = "8"\n'
                       '[[runs]]\nscenarios = ["basic"]\nmethods = ["camal"]\nseeds = [1]\n', "num_envs = '8'"),
}


@pytest.mark.parametrize("case", list(BAD_STUDIES))
def test_bad_study_file_is_refused_in_one_line(case, tmp_path):
    text, expected = BAD_STUDIES[case]
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(SystemExit) as refused:
        study.main(study.Args(str(tmp_path / "bad.toml"), results_dir=str(tmp_path / "results")))
    message = str(refused.value.code)
    assert message.startswith("error: ") and "\n" not in message and expected in message
    assert "valid" in message or "not a" in message
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_unreachable_address_and_unwritable_results_dir_are_refused(tmp_path):
    quick = str(ROOT / "experiments" / "quick.toml")
    cases = [
        (["--address", f"127.0.0.1:{free_port()}", "--results-dir", str(tmp_path / "results")], "no Ray head node"),
        (["--results-dir", str(tmp_path / "a_file" / "results")], "cannot be written"),
    ]
    (tmp_path / "a_file").write_text("")
    for flags, expected in cases:
        refused = run_study(quick, *flags)
        assert refused.returncode != 0
        assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1, refused.stderr
        assert expected in refused.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_training_alone_does_not_import_ray():
    code = "import sys, agents.ppo_camal; sys.exit('ray' in sys.modules)"
    assert run_python("-c", code).returncode == 0


def test_runs_with_a_record_of_the_studys_budget_count_as_done_on_a_machine_without_their_folders(tmp_path, capsys):
    """--records: the committed records of results/paper_dl stand for runs whose folders are gone; a record of
    another budget does not, and a missing records folder is refused before anything is written."""
    records = tmp_path / "records"
    shutil.copytree(ROOT / "results" / "paper_dl" / "resnet_mini__vanilla__1__1796237321",
                    records / "resnet_mini__vanilla__1__1796237321")
    other_budget = records / "vit_mini__vanilla__1__1796238436"
    shutil.copytree(ROOT / "results" / "paper_dl" / other_budget.name, other_budget)
    config = json.loads((other_budget / "config.json").read_text())
    (other_budget / "config.json").write_text(json.dumps({**config, "epochs": 5}))
    args = study.Args(str(ROOT / "experiments" / "paper_dl.toml"), results_dir=str(tmp_path / "runs"),
                      records=str(records), dry_run=True, scenarios=["resnet_mini", "vit_mini"],
                      methods=["vanilla"], seeds=[1, 2])
    study.main(args)
    states = {line.split()[0]: line.split()[3] for line in capsys.readouterr().out.splitlines()}
    assert states == {"resnet_mini__vanilla__1": "recorded", "resnet_mini__vanilla__2": "new",
                      "vit_mini__vanilla__1": "new", "vit_mini__vanilla__2": "new"}
    with pytest.raises(SystemExit) as refused:
        study.main(dataclasses.replace(args, records=str(tmp_path / "nowhere"), dry_run=False))
    assert str(refused.value.code).startswith("error: --records ") and "no such folder" in str(refused.value.code)
    assert not (tmp_path / "runs").exists()
