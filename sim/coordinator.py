"""The job coordinator of seed 002 (Coordinator API v1, miner-facing), simulated.

  POST /v1/miner/heartbeat   {miner_id, wallet, mode, gpu, ...}           -> 200 {ok, server_time}
  GET  /v1/miner/next?miner=ID&slots=N                                    -> 200 job | 204
  POST /v1/miner/proof       {id, miner_id, mode, output_sha, metrics}    -> 200 {status, credits}
  GET  /v1/wallet/balance?wallet=W                                        -> 200 {wallet, balance}
Bearer auth (``Authorization: Bearer <key>``); POSTs honour ``Idempotency-Key`` (a replay
returns the first answer, a different body with the same key is 409); every non-2xx answer is
``{"error": {"code", "message", "details"}}``; times are ISO-8601 UTC.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

WORKLOADS = ("torch_bench", "gpu_matmul_bench")
CREDITS = {"torch_bench": 1.0, "gpu_matmul_bench": 2.0}


class Heartbeat(BaseModel):
    miner_id: str = Field(min_length=1, max_length=128)
    wallet: str = Field(min_length=1, max_length=256)
    mode: str = Field(pattern="^(gpu|cpu)$")
    gpu: bool = False
    concurrency: int = Field(default=1, ge=1, le=64)
    workloads: list[str] = Field(default_factory=lambda: list(WORKLOADS))


class Proof(BaseModel):
    id: str = Field(min_length=1)
    miner_id: str = Field(default="", max_length=128)
    mode: str = Field(default="cpu", pattern="^(gpu|cpu)$")
    output_sha: str = Field(pattern="^[0-9a-f]{64}$")
    metrics: dict[str, float] = Field(default_factory=dict)
    output: str | None = Field(default=None, max_length=4_000_000)  # verified workloads


class CoordError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


@dataclass
class CoordinatorState:
    """Jobs, miners, balances and idempotency records."""

    api_keys: set[str]
    job_mix: tuple[str, ...] = ("torch_bench", "torch_bench", "gpu_matmul_bench", "llm_gen")
    job_size: int = 256
    jobs_issued: int = 0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    miners: dict[str, dict[str, Any]] = field(default_factory=dict)
    balances: dict[str, float] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, int, Any]] = field(default_factory=dict)
    paused: bool = False  # scenario: no jobs to hand out
    job_deadline_s: float = 300.0
    job_iterations: int = 20
    heartbeats: int = 0
    #: scenario: the next N proofs are recorded, but their answers come back only after
    #: ``proof_reply_delay_s`` (a client with a shorter timeout sees a network blip)
    slow_proof_replies: int = 0
    proof_reply_delay_s: float = 2.0
    _seq: Any = field(default_factory=lambda: itertools.count(1))


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def coordinator_app(state: CoordinatorState, now: Callable[[], datetime]) -> FastAPI:
    """The coordinator's app."""
    app = FastAPI(title="Coordinator API (simulated)", version="1")

    @app.exception_handler(CoordError)
    async def _coord_error(request: Request, exc: CoordError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return JSONResponse(error_body(
            "VALIDATION_ERROR", "request body or query is invalid",
            {"field": ".".join(str(x) for x in first.get("loc", ())),
             "reason": first.get("msg", "")}), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)

    def auth(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise CoordError(401, "UNAUTHORIZED", "missing Bearer token")
        if key not in state.api_keys:
            raise CoordError(403, "FORBIDDEN", "API key not valid for miner operations")
        return key

    async def idempotent(request: Request,
                         handler: Callable[[dict[str, Any]], tuple[int, Any]]) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            raise CoordError(400, "BAD_JSON", f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise CoordError(400, "BAD_JSON", "body must be a JSON object")
        key = request.headers.get("idempotency-key")
        digest = hashlib.sha256(raw).hexdigest()
        if key:
            seen = state.idempotency.get(key)
            if seen is not None:
                if seen[0] != digest:
                    raise CoordError(409, "IDEMPOTENCY_CONFLICT",
                                     "Idempotency-Key reused with a different body",
                                     {"idempotency_key": key})
                return JSONResponse(seen[2], seen[1], headers={"Idempotent-Replayed": "true"})
        status, payload = handler(body)
        if key:
            state.idempotency[key] = (digest, status, payload)
        return JSONResponse(payload, status)

    @app.post("/v1/miner/heartbeat")
    async def heartbeat(request: Request) -> Response:
        auth(request)

        def do(body: dict[str, Any]) -> tuple[int, Any]:
            hb = _validate(Heartbeat, body)
            state.miners[hb.miner_id] = {**hb.model_dump(), "last_seen": _iso(now())}
            state.heartbeats += 1
            return 200, {"ok": True, "server_time": _iso(now()), "miner_id": hb.miner_id}

        return await idempotent(request, do)

    @app.get("/v1/miner/next")
    async def next_job(request: Request, miner: str = "", slots: int = 1) -> Response:
        auth(request)
        if not miner:
            raise CoordError(400, "MISSING_PARAMETER", "query parameter 'miner' is required",
                             {"field": "miner"})
        if miner not in state.miners:
            raise CoordError(404, "UNKNOWN_MINER", "send a heartbeat first", {"miner": miner})
        if slots < 1:
            raise CoordError(422, "VALIDATION_ERROR", "slots must be >= 1", {"field": "slots"})
        if state.paused:
            return Response(status_code=204)
        n = next(state._seq)
        workload = state.job_mix[(n - 1) % len(state.job_mix)]
        job_id = f"job-{n:06d}"
        job = {"id": job_id, "workload": workload, "created_at": _iso(now()),
               "params": {"size": state.job_size, "iterations": state.job_iterations,
                          "seed": n, "reps": 3},
               "deadline_s": state.job_deadline_s, "miner": miner, "status": "assigned"}
        state.jobs[job_id] = job
        state.jobs_issued += 1
        return JSONResponse({k: v for k, v in job.items() if k not in ("miner", "status")})

    @app.post("/v1/miner/proof")
    async def proof(request: Request) -> Response:
        auth(request)

        def do(body: dict[str, Any]) -> tuple[int, Any]:
            p = _validate(Proof, body)
            job = state.jobs.get(p.id)
            if job is None:
                raise CoordError(404, "UNKNOWN_JOB", f"job {p.id} does not exist", {"id": p.id})
            if job["status"] != "assigned":
                raise CoordError(409, "ALREADY_SUBMITTED", f"job {p.id} already has a proof",
                                 {"id": p.id})
            verified = check_proof(job, p) if job["workload"] == "gpu_matmul_bench" else None
            job["status"] = "accepted"
            wallet = state.miners.get(job["miner"], {}).get("wallet", "unknown")
            credits = CREDITS.get(job["workload"], 0.5)
            state.balances[wallet] = state.balances.get(wallet, 0.0) + credits
            return 200, {"id": p.id, "status": "accepted", "credits": credits,
                         "wallet": wallet, "accepted_at": _iso(now()),
                         **({"verified": verified} if verified is not None else {})}

        answer = await idempotent(request, do)
        if state.slow_proof_replies > 0:
            state.slow_proof_replies -= 1
            await asyncio.sleep(state.proof_reply_delay_s)
        return answer

    @app.get("/v1/wallet/balance")
    async def balance(request: Request, wallet: str = "") -> Response:
        auth(request)
        if wallet:
            return JSONResponse({"wallet": wallet, "balance": state.balances.get(wallet, 0.0)})
        return JSONResponse({"wallets": [{"wallet": w, "balance": b}
                                         for w, b in sorted(state.balances.items())]})

    return app


def check_proof(job: dict[str, Any], p: Proof) -> dict[str, Any]:
    """A validator's check of a proof of GPU (schemas/proof_of_gpu.py): the output must
    be what the sha names, and each precision's product must check out; the verified class
    and throughput, or CoordError 422 PROOF_INVALID with the reason."""
    from schemas.proof_of_gpu import Challenge, verify

    def invalid(why: str) -> CoordError:
        return CoordError(422, "PROOF_INVALID", why, {"id": p.id})

    if p.output is None:
        raise invalid("this workload's proof must carry its output")
    if hashlib.sha256(p.output.encode()).hexdigest() != p.output_sha:
        raise invalid("output does not hash to output_sha")
    try:
        proofs = json.loads(p.output)["proofs"]
    except (ValueError, KeyError, TypeError):
        raise invalid("output is not a proof of GPU") from None
    params = job["params"]
    base = {"seed": params["seed"], "n": params["size"], "reps": params["reps"]}
    v32 = verify(Challenge.of({**base, "precision": "fp32"}), proofs.get("fp32"))
    if not v32.valid:
        raise invalid(f"fp32: {'; '.join(v32.reasons)}")
    v16 = verify(Challenge.of({**base, "precision": "fp16"}), proofs.get("fp16"),
                 fp32_tflops=v32.tflops)
    if not v16.valid:
        raise invalid(f"fp16: {'; '.join(v16.reasons)}")
    return {"class": v16.card_class or "", "fp32_tflops": round(v32.tflops, 6),
            "fp16_tflops": round(v16.tflops, 6), "spoofed": v16.spoofed,
            "reported": v16.reported}


def _validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CoordError(422, "VALIDATION_ERROR", "request body is invalid",
                         {"field": ".".join(str(x) for x in first["loc"]),
                          "reason": first["msg"]}) from None


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
