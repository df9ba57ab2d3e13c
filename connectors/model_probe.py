"""Model endpoint probes (seed 004): /health, /info and known-answer /api/chat prompts ->
``compute.health`` with latency, availability and the seed-004 score components.

  score = 0.4 quality + 0.3 speed + 0.2 availability + 0.1 participation
quality: share of known-answer prompts answered right; speed: 1 at or under ``fast_ms``,
falling linearly to 0 at ``slow_ms``; availability: share of health checks passed;
participation: share of the validation prompts answered at all (seed 004: "respond to
validation requests"); each over the last ``window`` probes.  ``/info`` (the model's name,
type, version, context length) is recorded with each probe and scores nothing.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from connectors.base import Emitter, ReplyError, every, fetch, load_json
from schemas.compute_score import ENDPOINT_WEIGHTS, endpoint_score
from schemas.events import EndpointHealthObserved

SOURCE = "connector:model-probe"
WEIGHTS = ENDPOINT_WEIGHTS
CAPITALS = (("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Canada", "Ottawa"))


def known_answer_prompts(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """``n`` (prompt, expected answer) pairs: arithmetic and capitals."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            out.append((f"What is {a} + {b}? Answer with the number.", str(a + b)))
        else:
            country, city = rng.choice(CAPITALS)
            out.append((f"What is the capital of {country}?", city))
    return out


def speed_component(latency_ms: float | None, fast_ms: float = 500.0,
                    slow_ms: float = 5000.0) -> float:
    if latency_ms is None:
        return 0.0
    if latency_ms <= fast_ms:
        return 1.0
    return max(0.0, 1.0 - (latency_ms - fast_ms) / (slow_ms - fast_ms))


def score(components: dict[str, float]) -> float:
    """Seed 004's weighted score (one formula, shared with the score agent)."""
    return endpoint_score(components)


class ChatReplyError(ValueError):
    """An /api/chat answer that is not seed 004's reply."""


def parse_chat_reply(raw: bytes) -> str:
    """The answer text of an /api/chat reply; ChatReplyError if it is not one."""
    try:
        body = load_json(raw)
    except ReplyError as exc:
        raise ChatReplyError(str(exc)) from None
    if not isinstance(body, dict):
        raise ChatReplyError(f"JSON {type(body).__name__}, not an object")
    answer = body.get("response")
    if not isinstance(answer, str):
        raise ChatReplyError(f"'response' is not a string ({type(answer).__name__})")
    pt = body.get("processing_time", 0)
    if isinstance(pt, bool) or not isinstance(pt, int | float) or pt < 0:
        raise ChatReplyError(f"'processing_time' is not a non-negative number ({pt!r})")
    return answer


def parse_info(raw: bytes) -> dict[str, Any]:
    """Seed 004's ``/info`` (model_name, model_type, version, capabilities,
    max_context_length); ChatReplyError when it is not one."""
    try:
        body = load_json(raw)
    except ReplyError as exc:
        raise ChatReplyError(str(exc)) from None
    if not isinstance(body, dict) or not isinstance(body.get("model_name"), str):
        raise ChatReplyError("/info has no string 'model_name'")
    ctx = body.get("max_context_length")
    if ctx is not None and (isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 0):
        raise ChatReplyError(f"'max_context_length' is not a token count ({ctx!r})")
    return {"model_name": body["model_name"][:256],
            "model_type": str(body.get("model_type", ""))[:64],
            "model_version": str(body.get("version", ""))[:64], "max_context_length": ctx}


@dataclass
class EndpointWindow:
    """Rolling results of the last probes of one endpoint."""

    window: int = 20
    health: deque[bool] = field(default_factory=deque)
    answered: deque[bool] = field(default_factory=deque)
    correct: deque[bool] = field(default_factory=deque)
    latency_ms: deque[float] = field(default_factory=deque)

    def push(self, healthy: bool, results: list[tuple[bool, bool, float | None]]) -> None:
        self.health.append(healthy)
        for answered, right, lat in results:
            self.answered.append(answered)
            if answered:
                self.correct.append(right)
                if lat is not None:
                    self.latency_ms.append(lat)
        for q, n in ((self.health, self.window), (self.answered, self.window * 4),
                     (self.correct, self.window * 4), (self.latency_ms, self.window * 4)):
            while len(q) > n:
                q.popleft()

    def components(self, fast_ms: float, slow_ms: float) -> dict[str, float]:
        def share(q: deque[bool]) -> float:
            return sum(q) / len(q) if q else 0.0
        lat = statistics.median(self.latency_ms) if self.latency_ms else None
        return {"quality": share(self.correct), "speed": speed_component(lat, fast_ms, slow_ms),
                "availability": share(self.health), "participation": share(self.answered)}


class ModelProbe:
    """Probe each endpoint every ``period_s``."""

    def __init__(self, endpoints: list[tuple[str, str]], emitter: Emitter, *,
                 period_s: float = 30.0, prompts: int = 4, timeout_s: float = 10.0,
                 fast_ms: float = 500.0, slow_ms: float = 5000.0, seed: int = 0):
        self.endpoints, self.emitter = endpoints, emitter
        self.period_s, self.prompts, self.timeout_s = period_s, prompts, timeout_s
        self.fast_ms, self.slow_ms = fast_ms, slow_ms
        self.rng = random.Random(seed)
        self.windows: dict[str, EndpointWindow] = {}

    async def probe(self, client: httpx.AsyncClient, name: str, url: str) -> EndpointHealthObserved:
        healthy = False
        try:
            status, raw = await fetch(client, "GET", f"{url}/health", timeout=self.timeout_s)
            body: Any = load_json(raw) if status == 200 else {}
            healthy = isinstance(body, dict) and body.get("status") == "healthy"
        except (httpx.HTTPError, ValueError):
            healthy = False
        info: dict[str, Any] = {}
        try:
            status, raw = await fetch(client, "GET", f"{url}/info", timeout=self.timeout_s)
            if status == 200:
                info = parse_info(raw)
        except ChatReplyError as exc:
            await self.emitter.dead(f"{url}/info", raw[:4096], f"bad info reply: {exc}",
                                    key=name)
        except (httpx.HTTPError, ReplyError):
            pass  # /info is descriptive: its absence costs no score
        results: list[tuple[bool, bool, float | None]] = []
        for prompt, expected in known_answer_prompts(self.rng, self.prompts):
            t0 = time.perf_counter()
            try:
                status, content = await fetch(
                    client, "POST", f"{url}/api/chat", timeout=self.timeout_s,
                    json={"prompt": prompt, "temperature": 0.0, "max_tokens": 32})
                lat = 1000 * (time.perf_counter() - t0)
                if status != 200:
                    results.append((False, False, None))
                    continue
                try:
                    answer = parse_chat_reply(content)
                except ChatReplyError as exc:
                    await self.emitter.dead(f"{url}/api/chat", content[:4096],
                                            f"bad chat reply: {exc}", key=name)
                    results.append((False, False, None))
                    continue
                results.append((True, expected.lower() in answer.lower(), lat))
            except ReplyError as exc:  # over the reply cap
                await self.emitter.dead(f"{url}/api/chat", None, f"bad chat reply: {exc}",
                                        key=name)
                results.append((False, False, None))
            except httpx.HTTPError:
                results.append((False, False, None))
        w = self.windows.setdefault(name, EndpointWindow())
        w.push(healthy, results)
        comp = w.components(self.fast_ms, self.slow_ms)
        lats = [lat for ok, _, lat in results if ok and lat is not None]
        return EndpointHealthObserved(
            site=self.emitter.site, device_id=name, ts=self.emitter.clock(), source=SOURCE,
            endpoint_url=url, available=healthy,
            latency_ms=statistics.median(lats) if lats else None, score=score(comp),
            quality=comp["quality"], speed=comp["speed"], availability=comp["availability"],
            participation=comp["participation"], **info)

    async def sweep(self, client: httpx.AsyncClient) -> None:
        events = await asyncio.gather(*(self.probe(client, n, u) for n, u in self.endpoints))
        await self.emitter.emit(list(events))

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient() as client:
            async def tick() -> None:
                await self.sweep(client)
            await every(self.period_s, stop, tick)
