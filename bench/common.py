"""Shared bits of the benchmarks: timing, the machine's limits, the NCA's FLOPs and bytes."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class Limits:
    """A device's measured ceilings: matmul rates (GFLOP/s) and copy bandwidth (GB/s)."""
    fp32: float
    bf16: float | None          # None on CPU: not measured
    bandwidth: float
    tf32: bool = False

    def __str__(self) -> str:
        if self.bf16 is None:
            return f"fp32 matmul {self.fp32:.0f} GFLOP/s, copy {self.bandwidth:.0f} GB/s"
        return (f"fp32 matmul {self.fp32 / 1000:.0f} TFLOP/s (tf32 {'on' if self.tf32 else 'off'}), "
                f"bf16 matmul {self.bf16 / 1000:.0f} TFLOP/s, copy {self.bandwidth:.0f} GB/s")

    def shares(self, images_per_s: float, flops_per_image: float, bytes_per_image: float) -> str:
        """The share of the matrix rate (bf16 on GPUs, fp32 on CPU) and of the bandwidth a rate reaches."""
        rate = self.bf16 or self.fp32
        return (f"{100 * images_per_s * flops_per_image / 1e9 / rate:5.1f}% of matmul, "
                f"{100 * images_per_s * bytes_per_image / 1e9 / self.bandwidth:5.1f}% of bandwidth")


def copy_gbs(device: torch.device, megabytes: int = 512, repeats: int = 5) -> float:
    """Device memory bandwidth as a large copy measures it (bytes read + written per second)."""
    x = torch.empty(megabytes << 18, device=device)  # 4-byte floats
    y = torch.empty_like(x)

    def copy():
        y.copy_(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * x.numel() * 4 / best_of(copy, repeats=repeats) / 1e9


def device_limits(device: torch.device) -> Limits:
    """The device's measured matmul rates and bandwidth: the ceilings for the NCA's FLOPs and bytes."""
    if device.type != "cuda":
        return Limits(matmul_gflops(), None, copy_gbs(device, 256))
    return Limits(matmul_gflops(8192, device=device), matmul_gflops(8192, device=device, dtype=torch.bfloat16),
                  copy_gbs(device), torch.backends.cuda.matmul.allow_tf32)


def paper_flops_per_image(channels: int, hidden: int, steps: int, size: int) -> float:
    """Forward+backward FLOPs of the published algorithm (not of the fused form): backward ~ 2x forward."""
    per_pixel_step = 2 * (2 * channels * 9 + 3 * channels * hidden + hidden * channels)
    return 3 * per_pixel_step * size * size * steps


def fused_bytes_per_image(channels: int, hidden: int, steps: int, size: int) -> float:
    """Bytes a step loop must move per image, forward + backward, if each step's kernels read and
    write each tensor once (the Triton step's design): forward reads the state and base and writes
    the state (2m + hidden values a pixel); backward reads the state, base and the state's gradient
    and writes dz, then reads dz and the gradient and writes the input's, then reads the state and
    dz for the 3x3 weights (5m + 4 hidden). m = channels - 3, fp32."""
    m = channels - 3
    return 4 * (7 * m + 5 * hidden) * size * size * steps


def machine(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return (f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def cpu_model() -> str:
    """The CPU's model name and its bfloat16 flags (what precision: auto looks at), from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    bf16 = [f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")]
    return f"{name} ({', '.join(bf16) if bf16 else 'no native bf16'})"
