"""The proof of GPU (schemas/proof_of_gpu.py): an honest rig passes, a product it did not
compute or a commitment it bent fails, a name it does not deliver is flagged."""

from __future__ import annotations

import base64
import copy
import struct
from typing import Any

import pytest
import torch

from schemas.compute_score import ACHIEVED, REFERENCE_TFLOPS
from schemas.proof_of_gpu import Challenge, classify, commit, matrix, prove, verify

N = 256


@pytest.fixture(scope="module")
def honest() -> dict[str, Any]:
    return prove(Challenge(seed=7, n=N, precision="fp32", reps=2), torch)


def test_an_honest_rig_passes_and_its_throughput_is_measured(honest: dict[str, Any]) -> None:
    c = Challenge(seed=7, n=N, precision="fp32", reps=2)
    v = verify(c, honest, torch=torch)
    assert v.valid, v.reasons
    assert v.tflops == pytest.approx(c.work / honest["seconds"] / 1e12)
    assert v.card_class is None and not v.spoofed  # a CPU is no listed GPU, and says so
    half = Challenge(seed=7, n=N, precision="fp16", reps=1)
    assert verify(half, prove(half, torch), torch=torch).valid  # bf16 stands in on a CPU


def test_the_entries_are_a_function_of_seed_and_position_only() -> None:
    a = matrix(torch, 7, 1, N)
    assert torch.equal(a, matrix(torch, 7, 1, N))
    assert not torch.equal(a, matrix(torch, 8, 1, N)) and not torch.equal(a, matrix(torch, 7, 2, N))
    assert float(a.min()) >= -1.0 and float(a.max()) < 1.0 and abs(float(a.mean())) < 0.01


def test_a_product_the_rig_did_not_compute_fails() -> None:
    c = Challenge(seed=7, n=N, precision="fp32", reps=1)
    # a real product, of the wrong matrices (another seed), committed faithfully
    wrong = (matrix(torch, 99, 1, N) @ matrix(torch, 99, 2, N)).numpy()
    proof = commit(c, [wrong[i].astype("<f4").tobytes() for i in range(N)], 0.01,
                   device="cpu", memory_gb=0.0, precision="fp32")
    v = verify(c, proof, torch=torch)
    assert not v.valid and "recomputed" in v.reasons[0]


def test_a_bent_row_or_rows_of_its_own_choosing_fail(honest: dict[str, Any]) -> None:
    c = Challenge(seed=7, n=N, precision="fp32", reps=2)
    bent = copy.deepcopy(honest)
    raw = bytearray(base64.b64decode(bent["openings"][0]["values"]))
    raw[:4] = struct.pack("<f", 3.0)
    bent["openings"][0]["values"] = base64.b64encode(bytes(raw)).decode()
    assert "Merkle path" in verify(c, bent, torch=torch).reasons[0]
    chosen = copy.deepcopy(honest)
    chosen["openings"][0]["row"] = (chosen["openings"][0]["row"] + 1) % N
    assert "the root asks for" in verify(c, chosen, torch=torch).reasons[0]
    for broken in ({}, {"root": "zz", "seconds": 1, "openings": []},
                   {**honest, "seconds": float("nan")}, {**honest, "precision": "fp16"}):
        assert not verify(c, broken, torch=torch).valid


def test_a_name_the_rig_does_not_deliver_is_flagged_and_scores_nothing(
        honest: dict[str, Any]) -> None:
    c = Challenge(seed=7, n=N, precision="fp32", reps=2)
    v = verify(c, {**honest, "device": "NVIDIA H100 80GB HBM3", "memory_gb": 85.0},
               torch=torch)
    assert v.valid and v.spoofed and v.card_class is None and v.score_base == 0.0
    assert "delivers no listed GPU's throughput" in v.reasons[0]


def test_a_claimed_time_shorter_than_the_verifiers_clock_allows_is_refused(
        honest: dict[str, Any]) -> None:
    c = Challenge(seed=7, n=N, precision="fp32", reps=2)
    assert verify(c, honest, elapsed_s=honest["seconds"] + 1.0, torch=torch).valid
    v = verify(c, honest, elapsed_s=honest["seconds"] / 10, torch=torch)
    assert not v.valid and "wall clock" in v.reasons[0]


def test_the_class_comes_from_throughput_and_memory_tells_h200_from_h100() -> None:
    f32, f16 = (ACHIEVED * t for t in REFERENCE_TFLOPS["NVIDIA H200"])
    # torch reports total_memory: ~150 GB on an H200, ~85 GB on an H100 80GB HBM3
    assert classify("fp16", f16, 150.0, fp32_tflops=f32) == "NVIDIA H200"
    assert classify("fp16", f16, 85.0, fp32_tflops=f32) == "NVIDIA H100 80GB HBM3"
    f32, f16 = (ACHIEVED * t for t in REFERENCE_TFLOPS["NVIDIA RTX 4090"])
    assert classify("fp16", f16, 25.0, fp32_tflops=f32) == "NVIDIA RTX 4090"
    assert classify("fp32", 0.05, 0.0) is None


def test_challenges_out_of_bounds_are_refused() -> None:
    for bad in ({"seed": -1}, {"seed": 1, "n": 10}, {"seed": 1, "precision": "fp8"},
                {"seed": 1, "reps": 0}, {"n": 256}):
        with pytest.raises(ValueError):
            Challenge.of(bad)
