"""Model endpoint probes against the simulated seed-004 endpoints, and the score maths."""

from __future__ import annotations

import httpx
import pytest

from connectors.base import Emitter, ListSink
from connectors.model_probe import ModelProbe, score, speed_component
from schemas.events import EndpointHealthObserved, RecordDeadLettered
from sim.farm import Farm


def test_seed_004_weights_and_speed_curve() -> None:
    assert score({"quality": 1, "speed": 1, "availability": 1, "participation": 1}) == 1.0
    assert score({"quality": 0.5, "speed": 1, "availability": 0, "participation": 1}) == 0.6
    assert speed_component(300) == 1.0 and speed_component(None) == 0.0
    assert speed_component(2750) == pytest.approx(0.5) and speed_component(9000) == 0.0


async def test_probes_score_the_simulated_endpoints(farm: Farm) -> None:
    eps = [(e["name"], e["url"]) for e in farm.endpoints()["model_endpoints"]]
    sink = ListSink()
    probe = ModelProbe(eps, Emitter(sink, source="t", site="s"), prompts=6, seed=1)
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            await probe.sweep(client)
        farm.models[1].down = True
        sink.events.clear()
        await probe.sweep(client)
    by = {e.device_id: e for e in sink.events if isinstance(e, EndpointHealthObserved)}
    good, down = by["sim-llm-1"], by["sim-llm-2"]
    assert good.available and good.quality >= 0.7 and good.speed == 1.0
    assert good.availability == 1.0 and good.latency_ms is not None
    assert good.score == pytest.approx(0.4 * good.quality + 0.3 * good.speed
                                       + 0.2 * good.availability + 0.1 * good.participation)
    assert not down.available and down.availability == 0.75  # 3 of 4 health checks passed
    assert down.participation < good.participation and down.score < good.score
    # /info is recorded with the probe (seed 004's fields)
    assert (good.model_name, good.model_version, good.max_context_length) == (
        "sim-llm-1", "1.0.0", 4096)


@pytest.mark.parametrize("raw", [b"[]", b'{"model_type": "llm"}', b'{"model_name": 3}',
                                 b'{"model_name": "m", "max_context_length": -1}',
                                 b'{"model_name": "m", "max_context_length": true}', b"{"])
def test_a_malformed_info_reply_is_refused(raw: bytes) -> None:
    from connectors.model_probe import ChatReplyError, parse_info

    with pytest.raises(ChatReplyError):
        parse_info(raw)


async def test_unreachable_and_garbled_endpoints(farm: Farm) -> None:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from streams.httpserve import HttpService

    app = FastAPI()

    @app.get("/health")
    def health() -> dict:  # type: ignore[type-arg]
        return {"status": "healthy"}

    @app.post("/api/chat", response_class=PlainTextResponse)
    def chat() -> str:
        return "I am not JSON"

    svc = HttpService(app)
    await svc.start()
    sink = ListSink()
    emitter = Emitter(sink, source="t", site="s")
    probe = ModelProbe([("garbled", svc.url), ("gone", "http://127.0.0.1:1")], emitter,
                       prompts=2, timeout_s=1.0)
    async with httpx.AsyncClient() as client:
        await probe.sweep(client)
    await svc.stop()
    by = {e.device_id: e for e in sink.events if isinstance(e, EndpointHealthObserved)}
    assert by["gone"].available is False and by["gone"].score == 0.0
    assert by["garbled"].available and by["garbled"].participation == 0.0
    dead = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    # two prompts, the same fault of the same endpoint: one letter, the other counted
    assert len(dead) == 1 and "bad chat reply" in dead[0].reason
    assert emitter.stats.dlq_suppressed == 1
