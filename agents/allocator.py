"""The C allocator's settings for the trainer's process.

Each PPO minibatch allocates and frees the same few large tensors (activations and their gradients,
1-30 MB each). glibc's malloc serves blocks that large with ``mmap`` and hands them back to the system
when they are freed, or trims them off its heap, so the next minibatch faults the same memory in again,
page by page, zeroed by the kernel: 1.8 million page faults in 6 PPO iterations on basic (README: Speed).
Raising both thresholds keeps the freed memory for the next minibatch; the process then holds its peak
memory until it ends.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems)
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB (and up to 1 GiB at its heap's top) for reuse.

    Returns whether the settings took; False where the C library is not glibc (macOS, Windows, musl)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
