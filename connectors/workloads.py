"""Compute workloads a coordinator job can ask for; each returns (output bytes, metrics).

``torch_bench`` is seed 002's benchmark (chained matmuls, CUDA when present, CPU here);
``gpu_matmul_bench`` is seed 001's FP32 and FP16 matmul benchmark as a proof of GPU the
coordinator checks (schemas/proof_of_gpu.py).  ``torch_bench``'s output is deterministic
for a job's parameters (a checksum of the result); timings go in the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from schemas.compute_score import identify


class UnknownWorkload(KeyError):
    """The job asks for a workload this miner does not run."""


def _torch() -> Any:
    """torch, imported when a job first runs (it is heavy)."""
    from schemas.proof_of_gpu import load_torch

    return load_torch()


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
    """Seed 001's FP32/FP16 matmul benchmark as a proof of GPU a validator can check
    (schemas/proof_of_gpu.py): the challenge's seed and size in ``params``; the output is
    the proof of each precision, the metrics its throughput."""
    from schemas.proof_of_gpu import Challenge, prove

    torch = _torch()
    base = {"seed": int(params.get("seed", 0)) & 0xFFFFFFFF,
            "n": int(params.get("n", params.get("size", 512))),
            "reps": int(params.get("reps", 3))}
    proofs, metrics = {}, {}
    for precision in ("fp32", "fp16"):
        c = Challenge.of({**base, "precision": precision})
        proofs[precision] = prove(c, torch)
        metrics[f"{precision}_tflops"] = c.work / proofs[precision]["seconds"] / 1e12
    gpu, distance = identify(metrics["fp32_tflops"], metrics["fp16_tflops"])
    metrics.update({"identification_distance": distance if distance != float("inf") else -1.0,
                    "identified": 1.0 if gpu else 0.0, "n": float(base["n"])})
    out = json.dumps({"workload": "gpu_matmul_bench", "challenge": base, "proofs": proofs},
                     sort_keys=True).encode()
    return out, metrics


#: workloads whose output the coordinator checks: the proof carries it
VERIFIABLE = frozenset({"gpu_matmul_bench"})


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


def _serve(conn: Any, gpu: int | None) -> None:
    """The worker process: run workloads sent over ``conn`` until it closes."""
    import os

    if gpu is not None:  # this process sees only its own card
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    while True:
        try:
            name, params = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", *run(name, params)))
        except UnknownWorkload as exc:
            conn.send(("unknown", str(exc), {}))
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason
            conn.send(("error", f"{type(exc).__name__}: {exc}", {}))


class WorkloadRunner:
    """Runs workloads in a worker process of its own (one per GPU slot), so that a job past
    its deadline is stopped for real: the process is killed, which frees its GPU, and the
    next job starts a new one.  The process is started on first use and kept between jobs
    (torch is imported once)."""

    def __init__(self, gpu: int | None = None) -> None:
        self.gpu = gpu
        self.busy = False
        self._proc: Any = None
        self._conn: Any = None

    def _ensure(self) -> None:
        import multiprocessing as mp

        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context("spawn")  # no fork of a process with threads and CUDA state
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self.gpu), daemon=True,
                                 name=f"hashplane-workload-{self.gpu}")
        self._proc.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    async def run(self, name: str, params: dict[str, Any], timeout_s: float,
                  ) -> tuple[bytes, dict[str, float]]:
        """The workload's output and metrics; TimeoutError after ``timeout_s`` (the worker
        is killed), UnknownWorkload, or RuntimeError with the workload's own error."""
        import asyncio

        if name not in WORKLOADS:
            raise UnknownWorkload(name)
        self.busy = True
        try:
            await asyncio.to_thread(self._ensure)
            self._conn.send((name, params))
            ready = await asyncio.to_thread(self._conn.poll, timeout_s)
            if not ready:
                self.stop()
                raise TimeoutError(f"{name} still running after {timeout_s:g} s: stopped "
                                   "(its worker process was killed, freeing the GPU)")
            try:
                kind, out, metrics = self._conn.recv()
            except (EOFError, OSError):
                self.stop()
                raise RuntimeError(f"{name}: the worker process died") from None
        finally:
            self.busy = False
        if kind == "unknown":
            raise UnknownWorkload(out)
        if kind == "error":
            raise RuntimeError(out)
        return out, metrics

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
            self._proc = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
