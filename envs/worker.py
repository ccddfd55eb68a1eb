"""What every env worker process does first: leave Ctrl-C to the trainer, and end with the trainer.

The vector env (gymnasium's AsyncVectorEnv) runs each engine in a worker process, and each ViZDoom
engine is a process of its own, child of its worker, which ignores SIGTERM and does not notice its
worker's death. Ctrl-C and SIGTERM must reach only the trainer, which finishes its update, writes
its checkpoint and then closes its workers; but when the trainer is killed outright (kill -9, an
out-of-memory kill), the kernel signals each worker (Linux's parent-death signal), which kills its
engines and exits. The trainer sends its workers the same signal when closing them did not end them
(``stop_workers``): they ignore SIGTERM, so gymnasium's and multiprocessing's ``terminate()`` cannot.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Sent to a worker when its parent dies; SIGINT and SIGTERM stay the trainer's.
PARENT_DEATH_SIGNAL = signal.SIGUSR1


def prepare_worker(parent_pid: int) -> None:
    """Call first thing in a worker forked by ``parent_pid`` (from its main thread: the kernel
    signals the worker when the forking thread ends)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    signal.signal(PARENT_DEATH_SIGNAL, kill_children_and_exit)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL))
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        kill_children_and_exit()


def stop_workers(processes) -> None:
    """End the worker processes still alive, and their engines, at once (their parent-death signal's
    handler does both), and reap them. SIGINT and SIGTERM wait until this is done, so that a signal cannot
    leave a worker behind, and with it a trainer that multiprocessing makes wait for it at exit."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, PARENT_DEATH_SIGNAL)
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():  # stuck in a call that does not return: its engines are orphaned
                process.kill()
                process.join()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def kill_children_and_exit(*_) -> None:
    """SIGKILL this process's children (the engines, which ignore SIGTERM), then exit at once."""
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as file:
                children = [int(pid) for pid in file.read().split()]
        except OSError:
            continue
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    os._exit(1)
