"""Proof of GPU: a challenge a rig answers with a matrix product it really computed, and the
check a validator runs on the answer (seed 001's FP32/FP16 matmul benchmark, made checkable).

The protocol, in one round (the coordinator's job and its proof):

1. The verifier's challenge: a ``seed``, a size ``n``, a precision (``fp32``, or ``fp16``:
   tensor cores, FP32 accumulate) and a number of repetitions.
2. The rig builds A and B (n x n) from the seed with a counter-based hash (``entries``:
   any entry is a pure function of (seed, matrix, row, column), so the verifier can make
   any row or column of them without the rest), times ``reps`` products C = A @ B on its
   GPU (CUDA synchronised before the clock stops), and commits to C: a Merkle root over its
   rows (sha256 of each row's float32 bytes).
3. It opens ``rows`` rows chosen by the root itself (Fiat-Shamir: sha256 of seed and root),
   each with its Merkle path, and reports the seconds, its card's name and memory.
4. The verifier checks every path against the root, recomputes ``entries_per_row``
   entries of each opened row (positions again from the root) in float64 from the same
   rounded inputs, and accepts when they agree within the precision's tolerance.  TFLOPS
   is 2 n^3 reps / seconds; the card class is the listed GPU whose expected throughput is
   nearest (``schemas.compute_score.identify``), with memory telling apart the classes of
   equal throughput (H200 141 GB and H100 80GB HBM3).  A reported name that is not the
   verified class is flagged ``spoofed``; ranking uses the verified class.

A rig that did not compute C can only pass by guessing the sampled entries: with 8 rows x
64 entries, a C that is wrong in a fraction f of its entries passes with (1-f)^512 (0.6 % at
f = 1 %; bench/proof_of_gpu.py measures it).  The
seconds are the rig's own word: the verifier bounds them by its own clock when it has one
(``elapsed_s``: a claim faster than the wall-clock allows is refused), and the work is sized
so that computing dominates that clock.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from schemas.compute_score import GPU_BASE_SCORES, identify

M32 = 0xFFFFFFFF
PRECISIONS = ("fp32", "fp16")
#: agreement allowed between a rig's entry and the float64 recomputation, relative to the
#: entry's magnitude (+1): the output rounding of each precision (bf16 where a CPU stands in
#: for fp16) with room for the accumulation order
TOLERANCE = {"fp32": 1e-4, "fp16": 4e-3, "bf16": 3e-2}
#: memory of the listed cards, GB as sold (what tells H200 from H100 80GB HBM3)
MEMORY_GB: dict[str, float] = {
    "NVIDIA H200": 141, "NVIDIA H100 80GB HBM3": 80, "NVIDIA H100": 80,
    "NVIDIA A100-SXM4-80GB": 80, "NVIDIA A100 80GB PCIe": 80, "NVIDIA L40s": 48,
    "NVIDIA L40": 48, "NVIDIA RTX 6000 Ada Generation": 48, "NVIDIA RTX A6000": 48,
    "NVIDIA RTX 4090": 24, "NVIDIA GeForce RTX 3090": 24, "NVIDIA L4": 24, "NVIDIA A40": 48,
    "NVIDIA RTX A5000": 24, "NVIDIA RTX A4500": 20,
}


@dataclass(frozen=True, slots=True)
class Challenge:
    seed: int
    n: int = 2048
    precision: str = "fp16"
    reps: int = 10
    rows: int = 8
    entries_per_row: int = 64

    def __post_init__(self) -> None:
        if not (0 <= self.seed <= M32 and 64 <= self.n <= 32768 and 1 <= self.reps <= 1000
                and 1 <= self.rows <= 64 and 1 <= self.entries_per_row <= 256
                and self.precision in PRECISIONS):
            raise ValueError(f"not a valid challenge: {self}")

    @classmethod
    def of(cls, params: dict[str, Any]) -> Challenge:
        """From a job's params (ValueError when they are not a challenge)."""
        try:
            return cls(seed=int(params["seed"]), n=int(params.get("n", 2048)),
                       precision=str(params.get("precision", "fp16")),
                       reps=int(params.get("reps", 10)), rows=int(params.get("rows", 8)),
                       entries_per_row=int(params.get("entries_per_row", 64)))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"proof_of_gpu: bad params ({exc})") from None

    @property
    def work(self) -> float:
        """Floating-point operations the timed products take."""
        return 2.0 * self.n ** 3 * self.reps


def _mix(x: Any) -> Any:
    """A 32-bit integer hash (xorshift-multiply) on non-negative int64 tensors < 2^32, whose
    products stay under 2^63 (exact on every device)."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & M32
    return x ^ (x >> 15)


def entries(torch: Any, seed: int, which: int, rows: Any, cols: Any, n: int) -> Any:
    """Entries of matrix ``which`` (1: A, 2: B) at (rows, cols), float32 in [-1, 1): a pure
    function of its arguments, the same on any device."""
    key = int(_mix(torch.tensor(seed ^ (which * 0x9E3779B9 & M32), dtype=torch.int64)))
    idx = (rows.to(torch.int64) * n + cols.to(torch.int64) + key) & M32
    bits = _mix(_mix(idx) ^ key)
    return (bits >> 8).to(torch.float32) / float(1 << 23) - 1.0


def matrix(torch: Any, seed: int, which: int, n: int, device: str = "cpu") -> Any:
    r = torch.arange(n, device=device, dtype=torch.int64)
    return entries(torch, seed, which, r[:, None], r[None, :], n)


def _leaf(row: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + row).digest()


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def merkle(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first (an odd node is paired with itself)."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        lv = levels[-1]
        levels.append([_node(lv[i], lv[i + 1] if i + 1 < len(lv) else lv[i])
                       for i in range(0, len(lv), 2)])
    return levels


def path(levels: list[list[bytes]], index: int) -> list[str]:
    out = []
    for lv in levels[:-1]:
        sib = index ^ 1
        out.append((lv[sib] if sib < len(lv) else lv[index]).hex())
        index //= 2
    return out


def root_of(leaf: bytes, index: int, proof: list[str]) -> bytes:
    h = leaf
    for sib in proof:
        s = bytes.fromhex(sib)
        h = _node(h, s) if index % 2 == 0 else _node(s, h)
        index //= 2
    return h


def picks(seed: int, root: bytes, count: int, bound: int, salt: bytes) -> list[int]:
    """``count`` distinct indices below ``bound`` drawn from the root (Fiat-Shamir)."""
    out: list[int] = []
    counter = 0
    while len(out) < min(count, bound):
        h = hashlib.sha256(salt + struct.pack("<IQ", seed, counter) + root).digest()
        counter += 1
        i = int.from_bytes(h[:8], "little") % bound
        if i not in out:
            out.append(i)
    return out


def load_torch() -> Any:
    """torch, imported when first needed (it is heavy); its import warns that pynvml is
    deprecated, which is not the operator's business."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*pynvml.*")
        import torch

    return torch


def prove(c: Challenge, torch: Any | None = None) -> dict[str, Any]:
    """Answer a challenge on this machine's GPU (CPU when it has none: bf16 stands in for
    fp16, which CPUs do not multiply fast)."""
    if torch is None:
        torch = load_torch()
    cuda = bool(torch.cuda.is_available())
    dev = "cuda" if cuda else "cpu"
    dtype = {"fp32": torch.float32, "fp16": torch.float16 if cuda else torch.bfloat16}[
        c.precision]
    a = matrix(torch, c.seed, 1, c.n, dev).to(dtype)
    b = matrix(torch, c.seed, 2, c.n, dev).to(dtype)
    # true FP32 (no TF32) and FP32 accumulation for fp16: what the verifier's tolerance is for
    saved = (torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    try:
        out = a @ b  # warm-up (kernel selection, clocks up)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(c.reps):
            out = a @ b
        if cuda:
            torch.cuda.synchronize()  # the GPU is done before the clock stops
        seconds = time.perf_counter() - t0
    finally:
        (torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction) = saved
    rows = out.to(torch.float32).cpu().contiguous()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        name, memory = str(props.name), props.total_memory / 1e9
    else:
        name, memory = "cpu", 0.0
    return commit(c, [rows[i].numpy().astype("<f4").tobytes() for i in range(c.n)], seconds,
                  device=name, memory_gb=memory,
                  precision="bf16" if dtype == torch.bfloat16 else c.precision)


def commit(c: Challenge, rows: list[bytes], seconds: float, *, device: str, memory_gb: float,
           precision: str) -> dict[str, Any]:
    """The proof of a result (its rows as float32 bytes): the Merkle root, and the rows the
    root selects opened with their paths."""
    levels = merkle([_leaf(r) for r in rows])
    root = levels[-1][0]
    opened = picks(c.seed, root, c.rows, c.n, b"rows")
    return {"root": root.hex(), "seconds": seconds, "device": device, "memory_gb": memory_gb,
            "precision": precision,
            "openings": [{"row": i, "values": base64.b64encode(rows[i]).decode(),
                          "path": path(levels, i)} for i in opened]}


@dataclass(slots=True)
class Verdict:
    valid: bool
    reasons: list[str] = field(default_factory=list)
    tflops: float = 0.0
    card_class: str | None = None  # the listed GPU the measured throughput identifies
    reported: str = ""
    spoofed: bool = False  # the reported name is not the verified class
    score_base: float = 0.0  # seed 001's base score of the verified class


def verify(c: Challenge, proof: Any, *, elapsed_s: float | None = None,
           fp32_tflops: float | None = None, torch: Any | None = None) -> Verdict:
    """Check a rig's answer to ``c``.  ``elapsed_s``: the verifier's own clock from the
    challenge to the answer (bounds the claimed seconds).  ``fp32_tflops``: the rig's
    verified FP32 throughput from an fp32 challenge, for identifying its class from both
    precisions (seed 001's benchmark); without it an fp16 answer is matched on fp16 alone."""
    if torch is None:
        torch = load_torch()
    v = Verdict(valid=False)
    try:
        root = bytes.fromhex(str(proof["root"]))
        seconds = float(proof["seconds"])
        openings = list(proof["openings"])
        v.reported = str(proof.get("device", ""))[:200]
        memory = float(proof.get("memory_gb", 0.0))
        precision = str(proof.get("precision", c.precision))
    except (KeyError, TypeError, ValueError) as exc:
        v.reasons.append(f"not a proof: {type(exc).__name__}: {exc}")
        return v
    if len(root) != 32 or not math.isfinite(seconds) or seconds <= 0:
        v.reasons.append("root or seconds out of range")
        return v
    if precision not in {"fp32": ("fp32",), "fp16": ("fp16", "bf16")}[c.precision]:
        v.reasons.append(f"answered in {precision}, asked for {c.precision}")
        return v
    if elapsed_s is not None and seconds > elapsed_s:
        v.reasons.append(f"claims {seconds:.3f} s of compute in {elapsed_s:.3f} s of wall clock")
        return v
    want = picks(c.seed, root, c.rows, c.n, b"rows")
    got = {o.get("row") for o in openings if isinstance(o, dict)}
    if got != set(want):
        v.reasons.append(f"opened rows {sorted(x for x in got if isinstance(x, int))}, "
                         f"the root asks for {sorted(want)}")
        return v
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    tol = TOLERANCE[precision]
    for o in openings:
        i = int(o["row"])
        try:
            raw = base64.b64decode(str(o["values"]), validate=True)
        except (ValueError, TypeError):
            v.reasons.append(f"row {i}: values are not base64")
            return v
        if len(raw) != 4 * c.n:
            v.reasons.append(f"row {i}: {len(raw)} bytes, not {4 * c.n}")
            return v
        if root_of(_leaf(raw), i, list(o.get("path", []))) != root:
            v.reasons.append(f"row {i}: its Merkle path does not lead to the root")
            return v
        row = struct.unpack(f"<{c.n}f", raw)
        cols = picks(c.seed, root, c.entries_per_row, c.n, b"cols%d" % i)
        k = torch.arange(c.n, dtype=torch.int64)
        a = entries(torch, c.seed, 1, torch.full_like(k, i), k, c.n).to(dtype).double()
        # the sampled columns of B at once, rounded as the rig's inputs were
        b = entries(torch, c.seed, 2, k[:, None], torch.tensor(cols)[None, :], c.n)
        refs = (a @ b.to(dtype).double()).tolist()
        for j, ref in zip(cols, refs, strict=True):
            if not abs(row[j] - ref) <= tol * (1.0 + abs(ref)):
                v.reasons.append(f"C[{i},{j}] = {row[j]!r}, recomputed {ref:.6g}")
                return v
    v.valid = True
    v.tflops = c.work / seconds / 1e12
    # the class: nearest listed throughput; memory splits classes of equal throughput
    v.card_class = classify(c.precision, v.tflops, memory, fp32_tflops)
    v.score_base = GPU_BASE_SCORES.get(v.card_class or "", 0.0)
    if v.reported and v.card_class != _listed(v.reported):
        v.spoofed = True
        v.reasons.append(f"reports {v.reported!r}, delivers "
                         f"{v.card_class or 'no listed GPU'}'s throughput")
    return v


def classify(precision: str, tflops: float, memory_gb: float,
             fp32_tflops: float | None = None) -> str | None:
    """The listed GPU a measured throughput (and memory) identifies, None when no listed
    card is within a factor of two."""
    from schemas.compute_score import ACHIEVED, REFERENCE_TFLOPS

    if precision == "fp16" and fp32_tflops is not None:
        best, _ = identify(fp32_tflops, tflops)
        candidates = [best] if best else []
    else:
        col = 1 if precision == "fp16" else 0
        dist = {name: abs(math.log(max(tflops, 1e-9) / (ACHIEVED * ref[col])))
                for name, ref in REFERENCE_TFLOPS.items()}
        near = min(dist.values())
        candidates = [n for n, d in dist.items() if d < math.log(2) and d - near < 1e-9]
    if not candidates:
        return None
    best = candidates[0]
    # equal throughput, different memory (H200 / H100 80GB HBM3): the memory decides
    peers = [n for n, ref in REFERENCE_TFLOPS.items() if ref == REFERENCE_TFLOPS[best]]
    if len(peers) > 1 and memory_gb > 0:
        best = min(peers, key=lambda n: abs(MEMORY_GB[n] - memory_gb))
    return best


def _listed(name: str) -> str | None:
    from schemas.compute_score import base_score

    return base_score(name)[0]
