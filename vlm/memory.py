"""Process memory: peak and current resident set (Linux ``/proc/self/status``), and the peak to report
for a training run (accelerator memory on CUDA, else peak RSS). Every figure of memory in vlm comes from here."""
from __future__ import annotations

import resource
from contextlib import contextmanager

import torch


def peak_rss_bytes() -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5). False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_rss():
    """``with peak_rss() as r: ...`` then ``r["peak"]`` = peak RSS bytes during the block (whole process)."""
    box = {"reset": reset_peak_rss(), "peak": 0}
    try:
        yield box
    finally:
        box["peak"] = peak_rss_bytes()


def peak_memory_mb() -> float:
    """Peak memory of this process in MiB: CUDA's peak allocation when a GPU is in use, else peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_bytes() / 2**20
