"""Seed-001 GPU compute score (pure): base scores, 8-GPU scaling to 50, allocation doubling.

Also the reference throughput used to identify a GPU from a matmul benchmark: dense peak
TFLOPS from NVIDIA's spec sheets (FP32 CUDA-core, FP16 tensor-core with FP32 accumulate).
"""

from __future__ import annotations

import math

#: seed 001's base scores
GPU_BASE_SCORES: dict[str, float] = {
    "NVIDIA H200": 4.00, "NVIDIA H100 80GB HBM3": 3.30, "NVIDIA H100": 2.80,
    "NVIDIA A100-SXM4-80GB": 1.90, "NVIDIA A100 80GB PCIe": 1.65, "NVIDIA L40s": 1.10,
    "NVIDIA L40": 1.00, "NVIDIA RTX 6000 Ada Generation": 0.90, "NVIDIA RTX A6000": 0.78,
    "NVIDIA RTX 4090": 0.68, "NVIDIA GeForce RTX 3090": 0.43, "NVIDIA L4": 0.43,
    "NVIDIA A40": 0.39, "NVIDIA RTX A5000": 0.36, "NVIDIA RTX A4500": 0.34,
}
MAX_GPUS = 8
SCALE = 50.0 / (max(GPU_BASE_SCORES.values()) * MAX_GPUS)  # 8 top GPUs = 50 points

#: (FP32, FP16-tensor) dense peak TFLOPS
REFERENCE_TFLOPS: dict[str, tuple[float, float]] = {
    "NVIDIA H200": (67.0, 989.0), "NVIDIA H100 80GB HBM3": (67.0, 989.0),
    "NVIDIA H100": (51.0, 756.0), "NVIDIA A100-SXM4-80GB": (19.5, 312.0),
    "NVIDIA A100 80GB PCIe": (19.5, 312.0), "NVIDIA L40s": (91.6, 362.0),
    "NVIDIA L40": (90.5, 181.0), "NVIDIA RTX 6000 Ada Generation": (91.1, 364.0),
    "NVIDIA RTX A6000": (38.7, 155.0), "NVIDIA RTX 4090": (82.6, 165.0),
    "NVIDIA GeForce RTX 3090": (35.6, 71.0), "NVIDIA L4": (30.3, 121.0),
    "NVIDIA A40": (37.4, 150.0), "NVIDIA RTX A5000": (27.8, 111.0),
    "NVIDIA RTX A4500": (23.7, 95.0),
}
ACHIEVED = 0.7  # matmul benchmarks reach roughly this share of peak


def gpu_score(gpu: str, count: int, allocated: bool = False) -> float:
    """Seed 001: base x min(count, 8) x scaling (0-50), doubled when allocated; unknown GPU 0."""
    base = GPU_BASE_SCORES.get(gpu, 0.0)
    s = base * max(0, min(count, MAX_GPUS)) * SCALE
    return round(2 * s if allocated else s, 6)


def identify(fp32_tflops: float, fp16_tflops: float) -> tuple[str | None, float]:
    """The listed GPU whose expected throughput is nearest (log distance), and that distance;
    None when nothing is within a factor of two (a CPU, or an unlisted card)."""
    if fp32_tflops <= 0 or fp16_tflops <= 0:
        return None, math.inf
    best, dist = None, math.inf
    for name, (f32, f16) in REFERENCE_TFLOPS.items():
        d = math.hypot(math.log(fp32_tflops / (ACHIEVED * f32)),
                       math.log(fp16_tflops / (ACHIEVED * f16)))
        if d < dist:
            best, dist = name, d
    return (best, dist) if dist < math.log(2) else (None, dist)


def base_score(card: str) -> tuple[str | None, float]:
    """The table entry of a card name as telemetry spells it ("RTX 4090", "H100", "NVIDIA
    A100-SXM4-80GB"): exact, then with NVIDIA's prefixes, then the lowest-scoring entry that
    contains the name (an ambiguous "A100" is scored as the cheaper variant); else 0."""
    for name in (card, f"NVIDIA {card}", f"NVIDIA GeForce {card}"):
        if name in GPU_BASE_SCORES:
            return name, GPU_BASE_SCORES[name]
    matches = [n for n in GPU_BASE_SCORES if card and card in n]
    if not matches:
        return None, 0.0
    best = min(matches, key=GPU_BASE_SCORES.__getitem__)
    return best, GPU_BASE_SCORES[best]


def rig_score(cards: list[str], allocated: bool = False) -> float:
    """Seed 001 for a machine of possibly mixed GPUs: the 8 best cards count, each at its
    base score, scaled so 8 top GPUs give 50; doubled when allocated."""
    bases = sorted((base_score(c)[1] for c in cards), reverse=True)[:MAX_GPUS]
    s = sum(bases) * SCALE
    return round(2 * s if allocated else s, 6)


#: seed 004's weights
ENDPOINT_WEIGHTS = {"quality": 0.4, "speed": 0.3, "availability": 0.2, "participation": 0.1}


def endpoint_score(components: dict[str, float]) -> float:
    """Seed 004: 0.4 quality + 0.3 speed + 0.2 availability + 0.1 participation."""
    return round(sum(w * components.get(k, 0.0) for k, w in ENDPOINT_WEIGHTS.items()), 6)
