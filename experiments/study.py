"""Run a declared study (scenarios x methods x seeds) on Ray: locally, or on a cluster with --address.

    python experiments/study.py experiments/quick.toml                    # local Ray, started on the fly
    python experiments/study.py experiments/paper.toml --address auto     # an existing Ray cluster
    python eval/aggregate.py runs/quick --out results/quick

Each run is one Ray task that trains with `agents/ppo_camal.py` (a subprocess) in
RESULTS/{env}__{method}__{seed}/, then evaluates it with `eval/attention.py`. A run is finished when
its checkpoint's step reaches the budget and its attention_eval.json exists; running a study again
skips finished runs and resumes the others from their checkpoints. A run whose worker or node dies is
retried by Ray and resumes from its checkpoint too. Ctrl-C stops every run with a checkpoint.
The study file format is described in experiments/quick.toml.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from agents import ppo_args, run_folder
from agents.methods import METHODS
from vision.folder import splits_of
from eval import selection
from envs import check_scenario
from scenarios import short_name

ROOT = Path(__file__).resolve().parents[1]

# agent flags the runner sets itself (from the run's scenario, method, seed, budget, folder, resources)
RUNNER_FLAGS = {"env", "seed", "total_timesteps", "runs_dir", "resume", "attn_loss", "mask_source", "cuda",
                "exp_name", "track"}
EVAL_RUNNER_FLAGS = {"run", "out", "cuda", "frames", "record_frames"}
STUDY_KEYS = {"budgets", "runs", "resources", "flags", "method_flags", "eval", "classifier"}
CLASSIFIER_RUNNER_FLAGS = {"data", "model", "seed", "epochs", "runs_dir", "resume", "attn_loss", "mask_source",
                           "cuda", "exp_name"}
CLASSIFIER_EVAL_RUNNER_FLAGS = {"run", "out", "cuda", "data"}
EVAL_RESULT = "attention_eval.json"
SHIFT_RESULT = "shift_eval.json"
SHIFT_SHARED_FLAGS = ("--episodes", "--seed", "--greedy")  # eval flags that eval/shift.py takes too
LOCK = ".study.lock"


@dataclass
class Args:
    study: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="STUDY.toml")]
    """the study file (e.g. experiments/quick.toml)"""
    address: str | None = None
    """Ray cluster to run on: HOST:PORT of its head, or auto (the cluster `ray start` made on this node); None: a local Ray started for this study"""
    results_dir: str | None = None
    """folder of the run folders, shared by every node of a cluster (None: runs/STUDY_NAME)"""
    cpus_per_run: float | None = None
    """CPUs reserved for each run, also its torch threads and env workers (None: the study file's [resources] cpus)"""
    gpus_per_run: float | None = None
    """GPU fraction reserved for each run, e.g. 0.25: 4 runs share a GPU (None: the study file's [resources] gpus)"""
    num_cpus: int | None = None
    """CPUs of the local Ray (None: all of this machine's); ignored with --address"""
    max_retries: int = 3
    """times Ray restarts a run whose worker process or node died (each restart resumes from the checkpoint)"""
    refresh: float = 10.0
    """seconds between two progress views on the console"""
    scenarios: list[str] | None = None
    """run only the study's runs of these scenarios, e.g. --scenarios basic (None: all of them)"""
    methods: list[str] | None = None
    """run only the study's runs of these methods, e.g. --methods vanilla camal (None: all of them)"""
    seeds: list[int] | None = None
    """run only the study's runs of these seeds, e.g. --seeds 1 (None: all of them)"""
    records: str | None = None
    """folder of the study's run records (eval/record.py's results/STUDY): a run with a record there of the
    study's budget counts as done, so a study goes on from its committed records on a machine without its run
    folders; None: only run folders count"""
    dry_run: bool = False
    """list the runs and their state (done / recorded / partial / new) and exit, without Ray"""


class StudyError(ValueError):
    """A problem with the user's input, reported as one line."""


@dataclass(frozen=True)
class Run:
    env: str
    method: str
    seed: int
    budget: int
    train_flags: tuple[str, ...]
    eval_flags: tuple[str, ...]
    num_envs: int
    batch_size: int
    data: str | None = None
    """a classifier study's data folder; None: an RL run (env: the scenario, budget: steps); else env is the
    classifier's model and budget its epochs"""

    @property
    def unit(self) -> str:
        return "steps" if self.data is None else "epochs"

    @property
    def name(self) -> str:
        return f"{short_name(self.env)}__{self.method}__{self.seed}"  # a .cfg path gives its file name

    @property
    def budget_key(self) -> str:
        """the key of the budget in a run's config.json"""
        return "total_timesteps" if self.data is None else "epochs"

    @property
    def final_step(self) -> int:
        """the trainer stops after budget // batch_size whole updates"""
        return self.budget // self.batch_size * self.batch_size


@dataclass(frozen=True)
class Study:
    name: str
    runs: list[Run]
    cpus: float
    gpus: float


# ---------------------------------------------------------------- the study file


def as_flags(values: dict, hints: dict, reserved: set[str], where: str) -> list[str]:
    """A TOML table of a script's Args fields -> its command-line flags, each value type-checked."""
    flags = []
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in reserved or name not in hints:
            valid = ", ".join(sorted(set(hints) - reserved))
            raise StudyError(f"{where}: unknown or runner-set flag '{key}'; valid: {valid}")
        if not fits(value, hints[name]):
            raise StudyError(f"{where}: {key} = {value!r} is not a {hints[name]}")
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def fits(value, hint) -> bool:
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(fits(value, h) for h in typing.get_args(hint) if h is not type(None))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def field_hints(args_class) -> dict:
    hints = typing.get_type_hints(args_class, include_extras=False)
    return {f.name: hints[f.name] for f in dataclasses.fields(args_class) if f.init and "Suppress" not in str(f.type)}


def table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a table")
    return value


def load_study(path: str, cpus: float | None = None, gpus: float | None = None) -> Study:
    """Parse and check a study file; every run's agent arguments pass the trainer's own checks."""
    file = Path(path)
    if not file.is_file():
        raise StudyError(f"{path}: no such study file")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise StudyError(f"{path}: cannot be read ({error})") from None
    return parse_study(text, path, file.stem, cpus, gpus)


def parse_study(text: str, path: str, name: str, cpus: float | None = None, gpus: float | None = None) -> Study:
    """A study from the text of a study file (path: where it comes from, for messages)."""
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise StudyError(f"{path}: not a valid TOML file ({error})") from None
    unknown = set(spec) - STUDY_KEYS
    if unknown:
        raise StudyError(f"{path}: unknown key '{sorted(unknown)[0]}'; valid: {', '.join(sorted(STUDY_KEYS))}")
    for key in ("budgets", "runs"):
        if key not in spec:
            raise StudyError(f"{path}: missing [{key}]" if key == "budgets" else f"{path}: missing [[runs]]")
    if "classifier" in spec:
        return parse_classifier_study(spec, path, name, cpus, gpus)
    agent_hints = field_hints(ppo_args.Args)
    eval_hints = field_hints(load_eval_args())
    budgets = table(spec["budgets"], f"{path}: [budgets]")
    for env, budget in budgets.items():
        try:
            check_scenario(env)
        except ValueError as error:
            raise StudyError(f"{path}: [budgets]: {error}") from None
        if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
            raise StudyError(f"{path}: [budgets] {env} = {budget!r}; a budget is a number of steps > 0")
    common = as_flags(table(spec.get("flags", {}), f"{path}: [flags]"), agent_hints, RUNNER_FLAGS, f"{path}: [flags]")
    method_flags = check_method_flags(spec, path)
    eval_flags = tuple(as_flags(table(spec.get("eval", {}), f"{path}: [eval]"), eval_hints, EVAL_RUNNER_FLAGS,
                                f"{path}: [eval]"))
    cpus, gpus = parse_resources(spec, path, cpus, gpus)

    groups = spec["runs"]
    if not isinstance(groups, list) or not groups:
        raise StudyError(f"{path}: [[runs]] must be one or more tables of scenarios, methods and seeds")
    runs: dict[str, Run] = {}
    for i, group in enumerate(groups, 1):
        where = f"{path}: [[runs]] #{i}"
        group = table(group, where)
        check_group(group, where, "scenarios", lambda env: check_budgeted_scenario(env, budgets, where))
        for env in group["scenarios"]:
            for method in group["methods"]:
                flags = tuple(common + as_flags(method_flags.get(method, {}), agent_hints, RUNNER_FLAGS,
                                                f"{path}: [method_flags.{method}]"))
                run_args = tyro.cli(ppo_args.Args, args=["--env", env, "--total-timesteps", str(budgets[env]),
                                                         *METHODS[method], *flags])
                try:
                    ppo_args.check_args(run_args)
                except ValueError as error:
                    raise StudyError(f"{where}: {env} {method}: {error}") from None
                for seed in group["seeds"]:
                    run = Run(env, method, seed, budgets[env], flags, eval_flags, run_args.num_envs,
                              run_args.num_envs * run_args.num_steps)
                    runs.setdefault(run.name, run)
    return Study(name, list(runs.values()), float(cpus), float(gpus))


def check_method_flags(spec: dict, path: str) -> dict:
    """The [method_flags] table: a table of flags per known method."""
    method_flags = table(spec.get("method_flags", {}), f"{path}: [method_flags]")
    for method, flags in method_flags.items():
        if method not in METHODS:
            raise StudyError(f"{path}: [method_flags.{method}]: unknown method; valid: {', '.join(METHODS)}")
        table(flags, f"{path}: [method_flags.{method}]")
    return method_flags


def check_group(group: dict, where: str, places: str, check_place) -> None:
    """One [[runs]] table: exactly PLACES (scenarios or models), methods and seeds, each a non-empty list of
    known methods, places that ``check_place`` accepts, and seeds in numpy's range."""
    if set(group) != {places, "methods", "seeds"}:
        raise StudyError(f"{where}: needs exactly the keys {places}, methods, seeds; got {', '.join(sorted(group))}")
    for key in (places, "methods", "seeds"):
        if not isinstance(group[key], list) or not group[key]:
            raise StudyError(f"{where}: {key} must be a non-empty list")
    for method in group["methods"]:
        if method not in METHODS:
            raise StudyError(f"{where}: unknown method {method!r}; valid: {', '.join(METHODS)}")
    for place in group[places]:
        check_place(place)
    for seed in group["seeds"]:
        if not fits(seed, int) or not 0 <= seed < 2**32:
            raise StudyError(f"{where}: seed {seed!r} is not an integer in [0, 2**32)")


def check_budgeted_scenario(env, budgets: dict, where: str) -> None:
    if env not in budgets:
        try:
            check_scenario(env)
        except (ValueError, TypeError) as error:
            raise StudyError(f"{where}: {error}") from None
        raise StudyError(f"{where}: scenario '{env}' has no budget in [budgets]")


def check_budgeted_model(model, budgets: dict, where: str) -> None:
    if model not in budgets:
        raise StudyError(f"{where}: model '{model}' has no budget (epochs) in [budgets]")


def parse_resources(spec: dict, path: str, cpus: float | None, gpus: float | None) -> tuple[float, float]:
    resources = table(spec.get("resources", {}), f"{path}: [resources]")
    if set(resources) - {"cpus", "gpus"}:
        raise StudyError(f"{path}: [resources]: unknown key '{sorted(set(resources) - {'cpus', 'gpus'})[0]}'; valid: cpus, gpus")
    cpus = cpus if cpus is not None else resources.get("cpus", 1)
    gpus = gpus if gpus is not None else resources.get("gpus", 0)
    if not fits(cpus, float) or cpus <= 0:
        raise StudyError(f"CPUs per run must be > 0, got {cpus!r}")
    if not fits(gpus, float) or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise StudyError(f"GPUs per run must be a fraction in [0, 1] or a whole number, got {gpus!r}")
    return cpus, gpus


def parse_classifier_study(spec: dict, path: str, name: str, cpus: float | None, gpus: float | None) -> Study:
    """A classifier study (a [classifier] table naming the data folder): [budgets] are epochs per model, and
    [[runs]] list models instead of scenarios; [flags] are agents/camal_classifier.py's, [eval] eval/classifier.py's."""
    from agents import camal_classifier
    from eval import classifier as classifier_eval
    from vision.models import MODELS

    settings = table(spec["classifier"], f"{path}: [classifier]")
    if set(settings) != {"data"} or not isinstance(settings["data"], str):
        raise StudyError(f"{path}: [classifier] needs exactly data = \"FOLDER\" (the data folder of every run)")
    data = str((Path(path).parent / settings["data"]).resolve()) if not Path(settings["data"]).is_absolute() \
        else settings["data"]
    hints = field_hints(camal_classifier.Args)
    budgets = table(spec["budgets"], f"{path}: [budgets]")
    for model, epochs in budgets.items():
        if model not in MODELS:
            raise StudyError(f"{path}: [budgets]: unknown model '{model}'; valid: {', '.join(MODELS)}")
        if not fits(epochs, int) or epochs <= 0:
            raise StudyError(f"{path}: [budgets] {model} = {epochs!r}; a classifier's budget is a number of epochs > 0")
    common = as_flags(table(spec.get("flags", {}), f"{path}: [flags]"), hints, CLASSIFIER_RUNNER_FLAGS,
                      f"{path}: [flags]")
    method_flags = check_method_flags(spec, path)
    eval_flags = tuple(as_flags(table(spec.get("eval", {}), f"{path}: [eval]"), field_hints(classifier_eval.Args),
                                CLASSIFIER_EVAL_RUNNER_FLAGS, f"{path}: [eval]"))
    cpus, gpus = parse_resources(spec, path, cpus, gpus)
    groups = spec["runs"]
    if not isinstance(groups, list) or not groups:
        raise StudyError(f"{path}: [[runs]] must be one or more tables of models, methods and seeds")
    runs: dict[str, Run] = {}
    for i, group in enumerate(groups, 1):
        where = f"{path}: [[runs]] #{i}"
        group = table(group, where)
        check_group(group, where, "models", lambda model: check_budgeted_model(model, budgets, where))
        for model in group["models"]:
            for method in group["methods"]:
                flags = tuple(common + as_flags(method_flags.get(method, {}), hints, CLASSIFIER_RUNNER_FLAGS,
                                                f"{path}: [method_flags.{method}]"))
                run_args = tyro.cli(camal_classifier.Args, args=["--model", model, "--epochs", str(budgets[model]),
                                                                 "--data", data, *METHODS[method], *flags])
                try:
                    camal_classifier.check_args(run_args, data_needed=False)
                except ValueError as error:
                    raise StudyError(f"{where}: {model} {method}: {error}") from None
                for seed in group["seeds"]:
                    run = Run(model, method, seed, budgets[model], flags, eval_flags, 0, 1, data)
                    runs.setdefault(run.name, run)
    return Study(name, list(runs.values()), float(cpus), float(gpus))


def select_runs(study: Study, scenarios: list[str] | None, methods: list[str] | None,
                seeds: list[int] | None = None) -> Study:
    """The part of a study to run now; its runs keep their names, so the whole study later skips them."""
    try:
        chosen = selection.select_runs(study.runs, scenarios, methods, seeds, owner="the study")
    except ValueError as error:
        raise StudyError(str(error)) from None
    return dataclasses.replace(study, runs=chosen)


def load_eval_args():
    """eval/attention.py's Args (eval/ is a package of this project)."""
    from eval import attention

    return attention.Args


# ---------------------------------------------------------------- one run's folder


def run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/" + run_folder.CONFIG))


def run_state(root: Path, run: Run) -> tuple[str, Path | None, int]:
    """(done | partial | new | conflict: reason, run folder, trained steps) of a run's folder."""
    folders = [f for f in run_folders(root) if (f / run_folder.CHECKPOINT).is_file()]
    if not folders:
        return "new", None, 0
    if len(folders) > 1:
        return f"conflict: {len(folders)} run folders with a checkpoint in {root}; keep one", None, 0
    folder = folders[0]
    budget = json.loads((folder / run_folder.CONFIG).read_text()).get(run.budget_key)
    if budget != run.budget:
        return (f"conflict: {folder} was started with a budget of {budget} {run.unit}, the study says {run.budget}; "
                "move the folder away to train it again", folder, 0)
    if run.data is None:
        step = run_folder.checkpoint_step(folder)
        evaluated = (folder / EVAL_RESULT).is_file() and (folder / SHIFT_RESULT).is_file()
    else:
        step = int(run_folder.load_classifier_checkpoint(folder)["epoch"])
        evaluated = (folder / run_folder.CLASSIFIER_EVAL).is_file()
    if step >= run.final_step and evaluated:
        return "done", folder, step
    return "partial", folder, step


def recorded(records: Path, run: Run) -> bool:
    """Whether the folder of run records holds one of this run (its name, then __TIME) with the study's budget."""
    for config in records.glob(f"{run.name}__*/{run_folder.CONFIG}"):
        budget = json.loads(config.read_text()).get(run.budget_key)
        if budget == run.budget:
            return True
    return False


def study_states(study: Study, results_dir: Path, records: Path | None) -> dict[str, tuple[str, int]]:
    """(state, trained steps) of every run: its run folder's state, or recorded when it has none and a record."""
    states = {}
    for run in study.runs:
        state, _, step = run_state(results_dir / run.name, run)
        if state == "new" and records is not None and recorded(records, run):
            state, step = "recorded", run.final_step
        states[run.name] = state, step
    return states


# ---------------------------------------------------------------- a run, on a Ray worker


class RunFailed(Exception):
    pass


def die_with_parent() -> None:
    """In the child: SIGTERM when the Ray worker that started it dies, so it checkpoints and exits."""
    PR_SET_PDEATHSIG = 1
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_logged(cmd: list[str], log: Path, cwd: Path, env: dict, lock_fd: int) -> int:
    """Run cmd, its output appended to log; Ray's cancel (KeyboardInterrupt) stops it with SIGTERM.

    The child inherits the run's lock, so a retry of this run waits until this child has exited."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(lock_fd,),
                                 preexec_fn=die_with_parent)
        try:
            while True:  # ray.cancel's KeyboardInterrupt is seen between two waits, not during one
                try:
                    return child.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    continue
        except KeyboardInterrupt:  # the trainer checkpoints on SIGTERM
            child.send_signal(signal.SIGTERM)
            child.wait()
            raise


def report_progress(root: Path, run: Run, board, stop: threading.Event, every: float = 5.0) -> None:
    """Send the run's step, SPS and recent return, read from its tensorboard events, to the board."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = None
    while not stop.wait(every):
        folders = run_folders(root)
        if not folders:
            continue
        if run.data is not None:  # a classifier: its curves.csv, one row per epoch
            rows = run_folder.read_curves(folders[-1])
            if rows:
                board.update.remote(run.name, step=int(rows[-1]["epoch"]), sps=rows[-1].get("train_images_per_s"),
                                    ret=rows[-1].get("val_accuracy"))
            continue
        if accumulator is None:
            accumulator = EventAccumulator(str(folders[-1]), size_guidance={"images": 1})
        try:
            accumulator.Reload()
            tags = accumulator.Tags()["scalars"]
            sps = accumulator.Scalars("charts/SPS")[-1] if "charts/SPS" in tags else None
            returns = [e.value for e in accumulator.Scalars("charts/episodic_return")[-20:]] if (
                "charts/episodic_return" in tags) else []
            board.update.remote(run.name, step=sps.step if sps else None, sps=sps.value if sps else None,
                                ret=sum(returns) / len(returns) if returns else None)
        except Exception:  # a half-written event file: try again at the next poll
            continue


def shift_flags(eval_flags: tuple[str, ...]) -> list[str]:
    """The evaluation flags that eval/shift.py shares with eval/attention.py (episodes, seed, greedy)."""
    kept = []
    for i, token in enumerate(eval_flags):
        if token in SHIFT_SHARED_FLAGS:
            kept.append(token)
            if i + 1 < len(eval_flags) and not eval_flags[i + 1].startswith("--"):
                kept.append(eval_flags[i + 1])
    return kept


def train_and_evaluate(run: Run, results_dir: str, cpus: float, gpus: float, board) -> str:
    """The body of a run's Ray task: train (new or resumed) up to the budget, then evaluate."""
    root = Path(results_dir) / run.name
    root.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, int(cpus)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    if run.data is not None:  # idle OpenMP threads spin by default, stealing the cores of the runs beside
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    device = [] if gpus > 0 else ["--no-cuda"]
    with open(root / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a previous attempt's trainer may still be writing its checkpoint
            board.update.remote(run.name, state="waiting for its previous attempt to exit")
            fcntl.flock(lock, fcntl.LOCK_EX)
        board.update.remote(run.name, state="running")
        state, folder, step = run_state(root, run)
        if state.startswith("conflict"):
            raise RunFailed(state.removeprefix("conflict: "))
        for stale in run_folders(root):  # started but never checkpointed: nothing to resume
            if not (stale / run_folder.CHECKPOINT).is_file():
                shutil.rmtree(stale)
        trainer = ROOT / ("agents/ppo_camal.py" if run.data is None else "agents/camal_classifier.py")
        if step < run.final_step:
            if folder is not None:
                cmd = [sys.executable, str(trainer), "--resume", str(folder)]
            elif run.data is None:
                cmd = [sys.executable, str(trainer), "--env", run.env, "--seed", str(run.seed),
                       "--total-timesteps", str(run.budget), "--runs-dir", str(root), *METHODS[run.method],
                       *device, *run.train_flags]
            else:
                cmd = [sys.executable, str(trainer), "--data", run.data, "--model", run.env, "--seed", str(run.seed),
                       "--epochs", str(run.budget), "--runs-dir", str(root), *METHODS[run.method], *device,
                       *run.train_flags]
            stop = threading.Event()
            reporter = threading.Thread(target=report_progress, args=(root, run, board, stop), daemon=True)
            reporter.start()
            try:
                code = run_logged(cmd, root / "train.log", root, env, lock.fileno())
            finally:
                stop.set()
            state, folder, step = run_state(root, run)
            if code != 0 or step < run.final_step:
                raise RunFailed(f"training exited with code {code} at {run.unit[:-1]} {step} of {run.final_step}; "
                                f"see {root / 'train.log'}")
        if run.data is not None:
            if not (folder / run_folder.CLASSIFIER_EVAL).is_file():
                board.update.remote(run.name, state="evaluating")
                cmd = [sys.executable, str(ROOT / "eval/classifier.py"), str(folder), *device, *run.eval_flags]
                code = run_logged(cmd, root / "eval.log", root, env, lock.fileno())
                if code != 0:
                    raise RunFailed(f"evaluation exited with code {code}; see {root / 'eval.log'}")
            return str(folder)
        if not (folder / EVAL_RESULT).is_file():
            board.update.remote(run.name, state="evaluating")
            cmd = [sys.executable, str(ROOT / "eval/attention.py"), str(folder), *device, *run.eval_flags]
            code = run_logged(cmd, root / "eval.log", root, env, lock.fileno())
            if code != 0:
                raise RunFailed(f"evaluation exited with code {code}; see {root / 'eval.log'}")
        if not (folder / SHIFT_RESULT).is_file():
            board.update.remote(run.name, state="evaluating")
            cmd = [sys.executable, str(ROOT / "eval/shift.py"), str(folder), *device, *shift_flags(run.eval_flags)]
            code = run_logged(cmd, root / "shift.log", root, env, lock.fileno())
            if code != 0:
                raise RunFailed(f"background-shift evaluation exited with code {code}; see {root / 'shift.log'}")
    return str(folder)


# ---------------------------------------------------------------- the console view


class ProgressBoard:
    """Latest state of each running run, written by the runs' tasks, read by the driver (a Ray actor)."""

    def __init__(self):
        self.runs: dict[str, dict] = {}

    def update(self, name: str, **fields) -> None:
        entry = self.runs.setdefault(name, {"state": "running", "attempt": 0})
        if fields.get("state") == "running":
            entry["attempt"] += 1
        entry.update({k: v for k, v in fields.items() if v is not None})

    def snapshot(self) -> dict[str, dict]:
        return self.runs


def progress_view(study: Study, done: set, failed: dict, running: set, board: dict, started: float) -> str:
    pending = len(study.runs) - len(done) - len(failed) - len(running)
    elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - started))
    lines = [f"[{elapsed}] {len(study.runs)} runs: {len(done)} done, {len(running)} running, "
             f"{len(failed)} failed, {pending} pending"]
    for run in study.runs:
        if run.name not in running:
            continue
        info = board.get(run.name, {})
        step = info.get("step")
        line = f"  {run.name:<40} {info.get('state', 'waiting'):<10}"
        if step is not None:
            sps, ret = info.get("sps"), info.get("ret")
            if run.data is None:
                line += f" step {step:>8}/{run.final_step:<8} SPS {sps:>5.0f}"
                line += f"  return {ret:8.2f}" if ret is not None else "  return      n/a"
            else:
                line += f" epoch {step:>4}/{run.final_step:<4} images/s {sps:>6.0f}"
                line += f"  val accuracy {ret:.3f}" if ret is not None and ret == ret else ""
        if info.get("attempt", 0) > 1:
            line += f"  (attempt {info['attempt']})"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------- the driver


def check_results_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise StudyError(f"results directory {path} cannot be written ({error.strerror or error})") from None


def check_address(address: str) -> None:
    """A HOST:PORT that does not answer fails here in seconds (Ray itself would retry for a minute)."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"--address {address!r}: expected HOST:PORT of a Ray head node, or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise StudyError(f"--address {address}: no Ray head node answers there ({error.strerror or error})") from None


def start_ray(args: Args):
    import ray

    options = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        if args.address is None:
            # Ray renices its workers (+15 by default), which would slow the trainers on a shared machine
            ray.init(address="local", num_cpus=args.num_cpus, _system_config={"worker_niceness": 0}, **options)
        else:
            ray.init(address=args.address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StudyError(f"--address {args.address}: cannot connect to Ray ({first_line})") from None
    return ray


def wait_for_locks(results_dir: Path, names: list[str], timeout: float) -> list[str]:
    """Block until no process holds a run's lock (its trainer has checkpointed and exited); the names still held."""
    deadline = time.time() + timeout
    held = []
    for name in names:
        with open(results_dir / name / LOCK, "a") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(lock, fcntl.LOCK_UN)
                    break
                except BlockingIOError:
                    if time.time() > deadline:
                        held.append(name)
                        break
                    time.sleep(0.5)
    return held


def start_order(runs: list[Run], states: dict[str, str]) -> list[Run]:
    """The unfinished runs in the order they are handed to Ray: those to resume first, then seed by seed
    (every scenario and method of a seed before the next seed), so that a study stopped part-way has its
    methods at the same seeds, which is what its comparisons need."""
    seeds = list(dict.fromkeys(run.seed for run in runs))
    unfinished = [run for run in runs if states[run.name] != "done"]
    return sorted(unfinished, key=lambda run: (states[run.name] != "partial", seeds.index(run.seed)))


def run_study(args: Args, study: Study, results_dir: Path, records: Path | None) -> int:
    """Run every unfinished run of the study on Ray; the exit code (0: all done)."""
    states = {name: "done" if state == "recorded" else state
              for name, (state, _) in study_states(study, results_dir, records).items()}
    todo = start_order(study.runs, states)
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "partial", "new")}
    print(f"study {study.name}: {len(study.runs)} runs in {results_dir}: {counts['done']} done"
          + (f" (or recorded in {records})" if records is not None else "")
          + f", {counts['partial']} to resume, {counts['new']} to start", flush=True)
    if not todo:
        return 0
    ray = start_ray(args)
    signal.signal(signal.SIGTERM, interrupt)  # after ray.init, whose own SIGTERM handler exits at once
    done = {name for name, state in states.items() if state == "done"}
    failed: dict[str, str] = {}
    refs: dict = {}
    started = time.time()
    try:
        board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        task = ray.remote(train_and_evaluate).options(num_cpus=study.cpus, num_gpus=study.gpus,
                                                      max_retries=args.max_retries, retry_exceptions=False)
        refs = {task.remote(run, str(results_dir), study.cpus, study.gpus, board): run for run in todo}
        last_view = 0.0
        while len(done) + len(failed) < len(study.runs):
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=min(args.refresh, 2.0))
            for ref in ready:
                run = refs.pop(ref)
                try:
                    ray.get(ref)
                    done.add(run.name)
                    print(f"done: {run.name}", flush=True)
                except ray.exceptions.RayTaskError as error:
                    cause = error.cause if isinstance(error.cause, RunFailed) else error
                    failed[run.name] = str(cause).strip().splitlines()[-1]
                    print(f"failed: {run.name}: {failed[run.name]}", flush=True)
                except ray.exceptions.RayError as error:  # worker or node died more than --max-retries times
                    failed[run.name] = f"{type(error).__name__} after {args.max_retries} retries"
                    print(f"failed: {run.name}: {failed[run.name]}", flush=True)
            if time.time() - last_view >= args.refresh and refs:
                last_view = time.time()
                snapshot = ray.get(board.snapshot.remote())
                running = {name for name, info in snapshot.items() if name not in done and name not in failed}
                print(progress_view(study, done, failed, running, snapshot, started), flush=True)
    except KeyboardInterrupt:
        print("stopping: every running run writes its checkpoint (Ctrl-C again to stop at once; "
              "rerun the same command to resume)", flush=True)
        for ref in refs:
            ray.cancel(ref)  # in the task: SIGTERM to the trainer, which checkpoints and exits
        # before shutdown: Ray kills a worker's children when the worker exits, checkpoint or not
        held = wait_for_locks(results_dir, [run.name for run in todo if (results_dir / run.name / LOCK).exists()],
                              timeout=600)
        if held:
            print(f"warning: still not stopped after 10 minutes: {', '.join(held)}", file=sys.stderr)
        raise
    finally:
        ray.shutdown()  # a local Ray stops here; on a cluster the study's workers end
    print(f"study {study.name}: {len(done)} done, {len(failed)} failed of {len(study.runs)} runs", flush=True)
    for name, reason in failed.items():
        print(f"  {name}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (e.g. a scheduler's cancel) stops the study as Ctrl-C does


def main(args: Args) -> None:
    try:
        study = select_runs(load_study(args.study, args.cpus_per_run, args.gpus_per_run), args.scenarios, args.methods,
                             args.seeds)
        if args.max_retries < 0 or args.refresh <= 0:
            raise StudyError("--max-retries must be >= 0 and --refresh > 0")
        if args.num_cpus is not None and args.num_cpus < 1:
            raise StudyError(f"--num-cpus must be >= 1, got {args.num_cpus}")
        results_dir = Path(args.results_dir or ROOT / "runs" / study.name).resolve()
        records = None if args.records is None else Path(args.records).resolve()
        if records is not None and not records.is_dir():
            raise StudyError(f"--records {args.records}: no such folder (eval/record.py writes a study's records, "
                             f"e.g. results/{study.name})")
        if args.dry_run:
            states = study_states(study, results_dir, records)
            for run in study.runs:
                state, step = states[run.name]
                print(f"{run.name:<40} {run.budget:>9} {run.unit}  {state} ({step} trained)")
            return
        data = {run.data for run in study.runs} - {None}
        for folder in data:  # a classifier study's data folder, before any run starts
            try:
                splits_of(folder)
            except ValueError as error:
                raise StudyError(f"{error} (generate the built-in one with vision/doom_objects.py --out {folder})") from None
        if args.address is not None:
            check_address(args.address)
        check_results_dir(results_dir)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
        sys.exit(run_study(args, study, results_dir, records))
    except StudyError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main(tyro.cli(Args))
