"""Machine facts measured in-process: memory copy bandwidth, bf16/fp32 matmul peak, load, peak RSS."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

from vlm.hardware import cpu_flags


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def copy_bandwidth(mib: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` bytes/s of ``dst.copy_(src)`` (read + write counted) on ``mib`` MiB buffers.

    Use a buffer larger than the last-level cache to measure DRAM bandwidth.
    """
    n = mib * 1024 * 1024 // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


def matmul_peak(dtype: torch.dtype = torch.bfloat16, size: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of a ``size``-square matmul in ``dtype`` (AMX handles bf16 on recent Xeons)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    inner = 4
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * size**3 / best


@dataclass
class MachineInfo:
    cpu: str
    cores: int
    torch_threads: int
    amx: bool
    copy_bandwidth_gbs: float
    bf16_matmul_tflops: float
    fp32_matmul_tflops: float
    load_average: list[float]
    python: str
    torch: str
    transformers: str

    def to_dict(self) -> dict:
        return asdict(self)


def measure(bandwidth_mib: int = 1024, matmul_size: int = 1024) -> MachineInfo:
    import transformers

    flags = cpu_flags()
    return MachineInfo(
        cpu=cpu_model(),
        cores=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        amx="amx_bf16" in flags,
        copy_bandwidth_gbs=round(copy_bandwidth(bandwidth_mib) / 1e9, 2),
        bf16_matmul_tflops=round(matmul_peak(torch.bfloat16, matmul_size) / 1e12, 3),
        fp32_matmul_tflops=round(matmul_peak(torch.float32, matmul_size) / 1e12, 3),
        load_average=load_average(),
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
    )
