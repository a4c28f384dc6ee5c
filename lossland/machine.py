"""Where a number was measured: the CPU, cores, load, the device and the versions, in one line.

Reports and benchmarks print it beside their figures, so a table read later says what it ran on.
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device | str | None = None) -> str:
    """One line: CPU model, usable cores, load average, the device (GPU name, or CPU and torch threads),
    torch, Python and OS versions. `device` None means CUDA when present, else the CPU."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " (load {:.1f} {:.1f} {:.1f})".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    n = torch.get_num_threads()
    where = (f"GPU {torch.cuda.get_device_name(dev)}" if dev.type == "cuda"
             else f"CPU only, {n} torch thread{'s' * (n != 1)}")
    return (f"{cpu_model()}, {cores} cores{load}; {where}; torch {torch.__version__}; "
            f"Python {platform.python_version()}; {platform.system()} {platform.release()}")


ALLOCATOR_MMAP_THRESHOLD = 256 * 2**20  # bytes: glibc serves blocks below this from its heap ...
ALLOCATOR_TRIM_THRESHOLD = 512 * 2**20  # ... and keeps up to this much freed heap instead of returning it
_tuned: list[bool] = []


def tune_allocator() -> bool:
    """Let glibc's malloc reuse large blocks instead of mapping fresh pages for each one (its default maps any
    block over 32 MiB anew). The double-backward graph of a convolution allocates tens of MiB per product: on a
    2-core CPU a float64 HVP of a LeNet over 3,000 images took 4.1 s, 3.2 s of it in the kernel clearing new
    pages, and 2.5 s after this (float32: 0.73 s either way). The process keeps up to ALLOCATOR_TRIM_THRESHOLD
    of freed memory. Results are unchanged; once per process; False where there is no glibc (macOS, Windows)."""
    if _tuned:
        return _tuned[0]
    ok = False
    if platform.system() == "Linux":
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = bool(libc.mallopt(-3, ALLOCATOR_MMAP_THRESHOLD)) and bool(libc.mallopt(-1, ALLOCATOR_TRIM_THRESHOLD))
        except (OSError, AttributeError):  # another C library (musl) or none to load
            ok = False
    _tuned.append(ok)
    return ok
