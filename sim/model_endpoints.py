"""Model endpoints of seed 004 (POST /api/chat, GET /health, GET /info), simulated.

Each endpoint has a latency (ms, with jitter), a failure rate (HTTP 500 with seed 004's
``{"error": ...}`` body) and a quality: the probability that it answers a known-answer prompt
correctly.  It understands the probe's known-answer prompts: small arithmetic ("What is
17 + 25?") and capitals ("What is the capital of France?").
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

CAPITALS = {"france": "Paris", "italy": "Rome", "germany": "Berlin", "spain": "Madrid",
            "japan": "Tokyo", "canada": "Ottawa", "kenya": "Nairobi", "peru": "Lima"}


@dataclass
class ModelEndpoint:
    """Behaviour of one simulated endpoint."""

    name: str
    latency_ms: float = 300.0
    jitter_ms: float = 80.0
    failure_rate: float = 0.02
    quality: float = 0.9
    model_type: str = "llm"
    seed: int = 0
    down: bool = False  # scenario: the endpoint stops answering health checks

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.started = time.monotonic()

    def answer(self, prompt: str) -> str:
        """The model's answer: right with probability ``quality``."""
        right = self.rng.random() < self.quality
        m = re.search(r"(-?\d+)\s*([+\-*x])\s*(-?\d+)", prompt)
        if m:
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            value = a + b if op == "+" else a - b if op == "-" else a * b
            return f"The answer is {value if right else value + self.rng.choice([-3, 1, 7])}."
        m = re.search(r"capital of ([A-Za-z]+)", prompt, re.IGNORECASE)
        if m and m.group(1).lower() in CAPITALS:
            city = CAPITALS[m.group(1).lower()]
            wrong = self.rng.choice([c for c in CAPITALS.values() if c != city])
            return f"The capital is {city if right else wrong}."
        return "I am a simulated model and can only answer arithmetic and capitals."


def model_app(ep: ModelEndpoint, now: Callable[[], datetime]) -> FastAPI:
    """The endpoint's app."""
    app = FastAPI(title=f"model endpoint {ep.name} (simulated)")

    @app.post("/api/chat")
    async def chat(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            body: Any = await request.json()
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) \
                or not body["prompt"].strip():
            return JSONResponse({"error": "'prompt' (non-empty string) is required"}, 400)
        max_tokens = body.get("max_tokens", 150)
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
            return JSONResponse({"error": "'max_tokens' must be an integer in 1..4096"}, 400)
        await asyncio.sleep(max(0.0, ep.rng.gauss(ep.latency_ms, ep.jitter_ms)) / 1000)
        if ep.down or ep.rng.random() < ep.failure_rate:
            return JSONResponse({"error": "CUDA out of memory (simulated failure)"}, 500)
        return JSONResponse({
            "response": ep.answer(body["prompt"])[: max_tokens * 8], "model": ep.name,
            "timestamp": now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "processing_time": round(time.perf_counter() - t0, 3)})

    @app.get("/health")
    async def health() -> JSONResponse:
        if ep.down:
            return JSONResponse({"status": "unhealthy", "model_loaded": False,
                                 "uptime": _uptime(ep)}, 503)
        return JSONResponse({"status": "healthy", "model_loaded": True, "uptime": _uptime(ep)})

    @app.get("/info")
    async def info() -> JSONResponse:
        return JSONResponse({"model_name": ep.name, "model_type": ep.model_type,
                             "version": "1.0.0", "capabilities": ["text-generation", "qa"],
                             "max_context_length": 4096})

    return app


def _uptime(ep: ModelEndpoint) -> str:
    s = int(time.monotonic() - ep.started)
    return f"{s // 3600}h {s % 3600 // 60}m {s % 60}s"
