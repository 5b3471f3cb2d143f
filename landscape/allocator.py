"""Memory for long batched runs: keep freed memory in the process, and how much there is.

glibc's malloc serves blocks above its mmap threshold (128 KiB at start, raised as blocks are
freed) with fresh pages from the OS, and returns a freed heap top to the OS once it exceeds the
trim threshold. Batched work holds several (K, P) temporaries at once, so each of them
page-faults anew (two live (88, 2410) arrays, 1.7 MB each, take 1.3 ms to create instead of
0.05 ms). :func:`keep_freed_memory` raises the mmap threshold to 32 MiB (glibc's maximum)
and the trim threshold to 256 MiB, so the process reuses its own pages. Measured on the digits
sampler (60 s, one thread): 35.8 -> 37.1 quenches per CPU-second, and symmetry alignment of 88
candidates 8.6 -> 4.0 ms. It is process-wide, costs at most the 256 MiB kept, and is a no-op
where the C library is not glibc. :func:`available_bytes` reads what the OS can still give.
"""
from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True if both were set."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def available_bytes() -> int | None:
    """Memory the OS can give without swapping (Linux: MemAvailable of /proc/meminfo), in bytes;
    None where it is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
