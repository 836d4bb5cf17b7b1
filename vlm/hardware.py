"""What this machine computes fast, so defaults can follow it.

Contract: :func:`cpu_flags` reads the CPU feature flags (empty where ``/proc/cpuinfo`` is missing);
:func:`bf16_is_fast` says whether bf16 matmuls beat float32 on ``device``: on CUDA when the GPU supports
bf16, on a CPU only with AMX (``amx_bf16``). Without AMX, PyTorch's bf16 CPU matmuls are emulated and run
several times slower than float32 (9x measured on an AVX2 EPYC), so "use bf16" is never a safe default.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return kind == "cpu" and "amx_bf16" in cpu_flags()
