"""Compute workloads a coordinator job can ask for; each returns (output bytes, metrics).

``torch_bench`` is seed 002's benchmark (chained matmuls, CUDA when present, CPU here);
``gpu_matmul_bench`` is the proof-of-GPU benchmark in the style of seed 001: FP32 and FP16
matmul throughput, identified against the GPU score table.  Outputs are deterministic for a
job's parameters (a checksum of the result), timings go in the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from agents.compute_score import identify


class UnknownWorkload(KeyError):
    """The job asks for a workload this miner does not run."""


def _torch() -> Any:
    """torch, imported when a job first runs (it is heavy).  Its import warns that pynvml
    (the package the design names) is deprecated; that is not the operator's business."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*pynvml.*")
        import torch

    return torch


def _device(torch: Any) -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_bench(params: dict[str, Any]) -> tuple[bytes, dict[str, float]]:
    torch = _torch()
    size = int(params.get("size", 256))
    iterations = int(params.get("iterations", 20))
    if not (16 <= size <= 8192 and 1 <= iterations <= 10_000):
        raise ValueError(f"torch_bench: size {size} / iterations {iterations} out of range")
    dev = _device(torch)
    g = torch.Generator(device="cpu").manual_seed(int(params.get("seed", 0)))
    x = torch.randn(size, size, generator=g).to(dev)
    t0 = time.perf_counter()
    for _ in range(iterations):
        x = x @ x
        x = x / x.norm()
    if dev == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    checksum = float(x.double().sum().cpu())
    out = json.dumps({"workload": "torch_bench", "size": size, "iterations": iterations,
                      "checksum": round(checksum, 4)}, sort_keys=True).encode()
    flops = 2.0 * size**3 * iterations
    return out, {"seconds": seconds, "gflops": flops / seconds / 1e9,
                 "device_cuda": 1.0 if dev == "cuda" else 0.0}


def gpu_matmul_bench(params: dict[str, Any]) -> tuple[bytes, dict[str, float]]:
    torch = _torch()
    size = int(params.get("size", 512))
    if not 64 <= size <= 16384:
        raise ValueError(f"gpu_matmul_bench: size {size} out of range")
    dev = _device(torch)
    half = torch.float16 if dev == "cuda" else torch.bfloat16  # CPUs lack fast FP16 matmul

    def tflops(dtype: Any) -> float:
        a = torch.ones(size, size, dtype=dtype, device=dev)
        b = torch.ones(size, size, dtype=dtype, device=dev)
        (a @ b)  # warm-up
        reps = 5
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        return 2.0 * size**3 * reps / (time.perf_counter() - t0) / 1e12

    f32, f16 = tflops(torch.float32), tflops(half)
    gpu, distance = identify(f32, f16)
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    out = json.dumps({"workload": "gpu_matmul_bench", "size": size, "device": name,
                      "identified": gpu}, sort_keys=True).encode()
    return out, {"fp32_tflops": f32, "fp16_tflops": f16, "identification_distance":
                 distance if distance != float("inf") else -1.0,
                 "identified": 1.0 if gpu else 0.0}


WORKLOADS: dict[str, Callable[[dict[str, Any]], tuple[bytes, dict[str, float]]]] = {
    "torch_bench": torch_bench,
    "gpu_matmul_bench": gpu_matmul_bench,
}


def run(workload: str, params: dict[str, Any]) -> tuple[bytes, dict[str, float]]:
    """Run a workload by name; UnknownWorkload if this miner has none of that name."""
    fn = WORKLOADS.get(workload)
    if fn is None:
        raise UnknownWorkload(workload)
    return fn(params)
