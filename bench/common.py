"""Shared bits of the benchmarks: timing and the machine's fp32 matmul rate."""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def best_of(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def product():
        a @ b
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    seconds = best_of(product, repeats=repeats)
    return 2 * n ** 3 / seconds / 1e9


def device_limits(device: torch.device) -> str:
    """The device's measured matmul rates: the ceiling for the NCA's FLOPs."""
    if device.type != "cuda":
        return f"fp32 matmul {matmul_gflops():.0f} GFLOP/s"
    fp32 = matmul_gflops(8192, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    bf16 = matmul_gflops(8192, device=device, dtype=torch.bfloat16)
    return (f"fp32 matmul {fp32 / 1000:.0f} TFLOP/s (tf32 {'on' if tf32 else 'off'}), "
            f"bf16 matmul {bf16 / 1000:.0f} TFLOP/s")


def machine(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
