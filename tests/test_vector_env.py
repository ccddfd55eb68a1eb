"""The vector env's processes: one worker per env, each with its engine; Ctrl-C and SIGTERM are left to
the process that made the env, close ends them, and none outlives that process when it is killed.

That its observations, rewards and autoresets match the engine frame by frame is tested in
test_envs.py (test_vector_env_matches_a_raw_engine_replay_frame_by_frame).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, open_files
from envs import make_vector_env

pytestmark = [pytest.mark.slow,  # engines in worker processes
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")]

STEPPING_FOREVER = """
import numpy as np
from envs import make_vector_env
envs = make_vector_env("basic", 3)
envs.reset(seed=0)
print("stepping", flush=True)
while True:
    envs.step(np.zeros(3, dtype=np.int64))
"""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (the children of each of its threads)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as file:
            for child in map(int, file.read().split()):
                found += [child, *descendants(child)]
    return found


def new_descendants(before: set[int]) -> list[int]:
    """The processes below this one that were not there before: what the code under test started, not
    what an earlier test may have left behind."""
    return [pid for pid in descendants(os.getpid()) if pid not in before]


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has ended; only its exit status is left)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until_ended(pids: list[int], seconds: float) -> list[int]:
    """The pids still running after ``seconds``; those are then killed, not left to the rest of the suite."""
    deadline = time.monotonic() + seconds
    while any(map(is_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if is_running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def test_killing_the_process_that_made_the_env_ends_its_workers_and_engines():
    process = subprocess.Popen([sys.executable, "-c", STEPPING_FOREVER], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout.readline().strip() == "stepping"
        tree = descendants(process.pid)
        assert len(tree) == 3 + 3, f"expected 3 workers and their 3 engines, found {tree}"
    finally:
        process.kill()
        process.wait()
    left = wait_until_ended(tree, seconds=10)
    assert not left, f"still running 10 s after kill -9 of their parent: {left}"


def test_workers_leave_ctrl_c_and_sigterm_to_the_trainer_and_close_ends_them():
    envs = make_vector_env("basic", 2)
    workers = [process.pid for process in envs.processes]
    tree, closed = workers, False
    try:
        envs.reset(seed=0)  # the workers have made their engines
        tree = workers + [pid for worker in workers for pid in descendants(worker)]
        assert len(tree) == 2 + 2, f"expected 2 workers and their 2 engines, found {tree}"
        for pid in workers:
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        observations, *_ = envs.step(np.zeros(2, dtype=np.int64))
        assert observations["pixels"].shape[0] == 2
        envs.close()
        closed = True
    finally:
        try:
            if not closed:
                envs.close()
        finally:
            left = wait_until_ended(tree, seconds=10)
    assert not left, f"still running 10 s after close: {left}"


class InterruptedPipe:
    """A worker's command pipe on which sending is interrupted, as by the trainer's signal handler."""

    def __init__(self, pipe):
        self.pipe = pipe

    def send(self, message):
        raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def test_a_signal_while_closing_a_vector_env_still_ends_every_worker_and_engine():
    """Interrupted before any worker got its close command, close must still end the workers (which
    ignore SIGTERM) and their engines, not leave them waiting and this process waiting for them at exit."""
    before = set(descendants(os.getpid()))
    envs = make_vector_env("basic", 2)
    envs.reset(seed=0)
    tree = new_descendants(before)
    assert len(tree) == 2 + 2, f"expected 2 workers and their 2 engines, found {tree}"
    envs.parent_pipes[0] = InterruptedPipe(envs.parent_pipes[0])
    with pytest.raises(KeyboardInterrupt):
        envs.close()
    left = wait_until_ended(tree, seconds=10)
    assert not left, f"still running 10 s after an interrupted close: {left}"


def test_a_signal_while_closing_env_groups_still_ends_every_worker_and_engine(monkeypatch):
    """The trainer's handler raises on a repeated Ctrl-C / SIGTERM; one that lands while the first group
    is closing must not leave the second group's workers (which ignore SIGTERM) waiting for a command,
    and the trainer waiting for them at exit."""
    from envs import make_env_groups

    before = set(descendants(os.getpid()))
    envs = make_env_groups("basic", 2, 2)
    envs.reset(seed=0)
    tree = new_descendants(before)
    assert len(tree) == 2 + 2, f"expected 2 workers and their 2 engines, found {tree}"
    first_close = envs.groups[0].close

    def close_then_interrupted(**kwargs):
        first_close(**kwargs)
        raise KeyboardInterrupt  # as the trainer's signal handler raises Interrupted

    monkeypatch.setattr(envs.groups[0], "close", close_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        envs.close()
    left = wait_until_ended(tree, seconds=10)
    assert not left, f"still running 10 s after an interrupted close: {left}"


def test_engines_inherit_none_of_the_files_of_the_process_that_made_the_env(tmp_path):
    """A study hands its trainer the run's lock as an open file; an engine that inherited it and outlived its
    worker (engines do not notice their parent's death) would hold the lock for good, and the run's retry
    would wait for it forever. The workers, which die with their parent, may hold it; the engines must not."""
    lock = open(tmp_path / "run.lock", "w")
    os.set_inheritable(lock.fileno(), True)  # as subprocess's pass_fds leaves it in the trainer
    envs = make_vector_env("basic", 2)
    try:
        envs.reset(seed=0)
        workers = [process.pid for process in envs.processes]
        engines = [pid for worker in workers for pid in descendants(worker)]
        assert len(engines) == 2, f"expected 2 engines, found {engines}"
        assert all(str(tmp_path / "run.lock") in open_files(pid) for pid in workers)  # what the test relies on
        assert [pid for pid in engines if str(tmp_path / "run.lock") in open_files(pid)] == []
    finally:
        envs.close()
        lock.close()
