#!/usr/bin/env bash
# The GPU checks of hashplane on a machine with a real NVIDIA GPU, in one go (a few
# minutes): NVML telemetry of every GPU through connectors.gpu_backend.NvmlBackend, a
# power-limit read-back (the limit in force set again and read back: nothing changes), the
# proof of GPU at full size (prove and verify, fp32 and fp16, the class it identifies), and
# the torch workloads the coordinator hands out.  Prints what it measured; exits non-zero
# only when a check that should pass on a GPU failed.
#
#   bench/gpu_device_check.sh            (PY=path/to/python to choose the interpreter)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec timeout "${GPU_CHECK_TIMEOUT_S:-540}" "$PY" - <<'PYEOF'
import json, sys, time
sys.path.insert(0, ".")
failed = []

def section(title):
    print(f"\n== {title}", flush=True)

section("NVML (nvidia-ml-py)")
try:
    import pynvml
    from connectors.gpu_backend import GpuBackendError, NvmlBackend
    nv = NvmlBackend()
    print(f"driver {pynvml.nvmlSystemGetDriverVersion()}, NVML {pynvml.nvmlSystemGetNVMLVersion()}, {nv.count()} GPU(s)")
    for i in range(nv.count()):
        t0 = time.perf_counter()
        r = nv.read(i)
        print(f"GPU {i}: read in {1000 * (time.perf_counter() - t0):.1f} ms")
        print("  " + json.dumps({k: getattr(r, k) for k in r.__dataclass_fields__}, default=str))
        limit = r.power_limit_w
        try:
            back = nv.set_power_limit(i, limit)
            print(f"  power limit {limit:g} W set again, read back {back:g} W "
                  f"(range {r.power_limit_min_w:g}-{r.power_limit_max_w:g} W)")
            if abs(back - limit) > 1.0:
                failed.append(f"GPU {i} power limit read back {back} W, set {limit} W")
        except GpuBackendError as exc:
            print(f"  power limit not settable here ({exc.kind}): {exc}")
except Exception as exc:  # noqa: BLE001 - report and go on to the other checks
    print(f"NVML check failed: {type(exc).__name__}: {exc}")
    failed.append(f"NVML: {exc}")

section("proof of GPU (schemas/proof_of_gpu.py)")
from connectors.workloads import _torch
torch = _torch()
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available'}")
from schemas.proof_of_gpu import Challenge, prove, verify
n = 8192 if cuda else 512
f32 = None
for precision in ("fp32", "fp16"):
    c = Challenge(seed=2026, n=n, precision=precision, reps=20 if cuda else 2)
    t0 = time.perf_counter(); p = prove(c, torch); t1 = time.perf_counter()
    v = verify(c, p, fp32_tflops=f32, torch=torch); t2 = time.perf_counter()
    f32 = v.tflops if precision == "fp32" else f32
    print(f"{precision}: n={n} reps={c.reps} {v.tflops:.2f} TFLOPS, valid {v.valid} {v.reasons}, "
          f"class {v.card_class}, reported {p['device']!r} ({p['memory_gb']:.1f} GB), "
          f"spoofed {v.spoofed}; prove {t1 - t0:.2f} s, verify {1000 * (t2 - t1):.0f} ms")
    if not v.valid:
        failed.append(f"proof {precision}: {v.reasons}")

section("torch workloads (connectors/workloads.py)")
from connectors import workloads
for name, params in (("torch_bench", {"size": 4096 if cuda else 512, "iterations": 50, "seed": 1}),
                     ("gpu_matmul_bench", {"seed": 7, "n": 4096 if cuda else 256, "reps": 10})):
    t0 = time.perf_counter()
    out, metrics = workloads.run(name, params)
    print(f"{name}: {time.perf_counter() - t0:.2f} s, {len(out)} bytes out, "
          + json.dumps({k: round(v, 3) for k, v in metrics.items()}))

section("result")
print("all checks passed" if not failed else "FAILED: " + "; ".join(failed))
sys.exit(1 if failed and cuda else 0)
PYEOF
