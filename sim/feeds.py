"""Supply feeds and their current/voltage sensors, publishing over MQTT.

Each feed (a transformer, a generator, a PPA connection) has a capacity (kW) that scenarios
change and carries a share of the site load proportional to its capacity.  Its sensor
publishes every second, to ``<site>/power/<feed>/state``, a JSON object::

    {"voltage_v": 401.2, "current_a": 702.4, "power_kw": 478.9, "capacity_kw": 800.0,
     "ts": "2026-11-21T12:00:00.000Z"}
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass
class Feed:
    """One supply feed."""

    feed_id: str
    capacity_kw: float
    voltage_v: float = 400.0
    power_factor: float = 0.98

    def topic(self, site: str) -> str:
        return f"{site}/power/{self.feed_id}/state"


def feed_readings(feeds: list[Feed], load_kw: float, rng: random.Random,
                  now: datetime) -> list[tuple[Feed, dict[str, Any]]]:
    """What each sensor reads when the site draws ``load_kw`` (split by capacity)."""
    total_cap = sum(f.capacity_kw for f in feeds) or 1.0
    out = []
    for f in feeds:
        p = load_kw * f.capacity_kw / total_cap * (1 + 0.003 * rng.gauss(0, 1))
        v = f.voltage_v * (1 + 0.004 * rng.gauss(0, 1))
        i = p * 1000 / (math.sqrt(3) * v * f.power_factor) if f.capacity_kw > 0 else 0.0
        out.append((f, {"voltage_v": round(v, 2), "current_a": round(max(0.0, i), 2),
                        "power_kw": round(max(0.0, p), 3), "capacity_kw": f.capacity_kw,
                        "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z")}))
    return out


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


async def start_embedded_broker(host: str, port: int) -> Any:
    """An in-process MQTT 3.1.1 broker (amqtt), anonymous, for the embedded farm."""
    from amqtt.broker import Broker

    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    return broker
