"""Where a number was measured: the CPU, cores, load, the device and the versions, in one line.

Reports and benchmarks print it beside their figures, so a table read later says what it ran on.
"""

from __future__ import annotations

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
