"""Supply-feed power sensors over MQTT (aiomqtt) -> ``power.readings``.

Each sensor has a mapping (data, not code): its topic, the feed it measures, the payload
format (a JSON object or a plain number), which JSON field holds each quantity, and a scale
(e.g. W -> kW).  ``parse_payload`` is pure; undecodable or implausible payloads go to dlq.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiomqtt
import orjson

from connectors.base import ConnectorError, Emitter, with_backoff
from schemas.events import FeedPowerMeasured

SOURCE = "connector:power-sensors"
#: A sensor's message is a few hundred bytes; anything this large is not one.
MAX_PAYLOAD_BYTES = 64 << 10
QUANTITIES = ("voltage_v", "current_a", "power_kw", "capacity_kw")


@dataclass(frozen=True)
class SensorMapping:
    """How to read one sensor's messages."""

    topic: str
    feed_id: str
    format: str = "json"  # json | number
    fields: dict[str, str] = field(default_factory=lambda: {q: q for q in QUANTITIES})
    scale: dict[str, float] = field(default_factory=dict)
    number_quantity: str = "power_kw"  # what a plain-number payload is
    nominal_voltage_v: float = 400.0
    #: nameplate capacity for a sensor that reports none (volts and amps only): without it
    #: the feed's capacity would be unknown and the site would shed itself
    capacity_kw: float | None = None


class PayloadError(ValueError):
    """A sensor message that does not make a reading."""


def _finite(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise PayloadError(f"{name}: not a number ({v!r})")
    try:
        f = float(v)
    except ValueError:
        raise PayloadError(f"{name}: not a number ({v!r})") from None
    if math.isnan(f) or math.isinf(f):
        raise PayloadError(f"{name}: not finite ({v!r})")
    return f


def parse_payload(payload: bytes, m: SensorMapping, *, site: str,
                  ts: datetime) -> FeedPowerMeasured:
    """A reading from one message; PayloadError when it cannot be one."""
    values: dict[str, float] = {}
    if m.format == "number":
        text = payload[:64].decode("utf-8", "strict") if payload else ""
        values[m.number_quantity] = _finite(m.number_quantity, text.strip())
    else:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise PayloadError(f"payload of {len(payload)} bytes over {MAX_PAYLOAD_BYTES}")
        try:
            obj = orjson.loads(payload)  # bounded depth: an error, never a RecursionError
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise PayloadError(f"JSON {type(obj).__name__}, not an object")
        for q, key in m.fields.items():
            if key in obj and obj[key] is not None:
                values[q] = _finite(key, obj[key])
    for q, k in m.scale.items():
        if q in values:
            values[q] *= k
    if "power_kw" not in values:
        if "voltage_v" in values and "current_a" in values:
            values["power_kw"] = math.sqrt(3) * values["voltage_v"] * values["current_a"] / 1000
        else:
            raise PayloadError("no power_kw, and no voltage_v and current_a to derive it")
    if values["power_kw"] < -1e-6:
        raise PayloadError(f"negative power {values['power_kw']} kW")
    v = values.get("voltage_v", m.nominal_voltage_v)
    i = values.get("current_a", values["power_kw"] * 1000 / (math.sqrt(3) * v) if v else 0.0)
    if v < 0 or i < 0:
        raise PayloadError("negative voltage or current")
    cap = values.get("capacity_kw", m.capacity_kw)
    if cap is not None and cap < 0:
        raise PayloadError(f"negative capacity {cap} kW")
    return FeedPowerMeasured(site=site, device_id=m.feed_id, ts=ts, source=SOURCE,
                             feed_id=m.feed_id, voltage_v=v, current_a=i,
                             power_kw=max(0.0, values["power_kw"]), capacity_kw=cap)


def tls_context(ca_file: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """A verifying TLS context for ``mqtts://`` (the system CAs unless ``ca_file``)."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


class PowerSensors:
    """Subscribe to every mapped topic; publish readings as they arrive."""

    def __init__(self, host: str, port: int, mappings: list[SensorMapping], emitter: Emitter,
                 *, username: str | None = None, password: str | None = None,
                 tls: ssl.SSLContext | None = None):
        self.host, self.port = host, port
        self.username, self.password, self.tls = username, password, tls
        self.mappings = {m.topic: m for m in mappings}
        self.emitter = emitter

    async def handle(self, topic: str, payload: bytes) -> None:
        m = self.mappings.get(topic)
        if m is None:
            return
        try:
            event = parse_payload(payload, m, site=self.emitter.site, ts=self.emitter.clock())
        except Exception as exc:  # noqa: BLE001 - whatever a sensor sends is its fault
            await self.emitter.dead(f"mqtt://{self.host}:{self.port}/{topic}", payload,
                                    f"{exc}"[:2000], key=m.feed_id)
            return
        await self.emitter.emit([event])

    async def run(self, stop: asyncio.Event) -> None:
        async def session() -> None:
            try:
                async with aiomqtt.Client(self.host, self.port, username=self.username,
                                          password=self.password,
                                          tls_context=self.tls) as client:
                    for topic in self.mappings:
                        await client.subscribe(topic, qos=1)
                    reader = asyncio.create_task(self._read(client))
                    stopper = asyncio.create_task(stop.wait())
                    done, _ = await asyncio.wait({reader, stopper},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    for t in (reader, stopper):
                        t.cancel()
                    if reader in done and reader.exception():
                        raise ConnectorError(str(reader.exception()))
            except aiomqtt.MqttError as exc:
                raise ConnectorError(f"MQTT {self.host}:{self.port}: {exc}") from exc

        await with_backoff(f"MQTT {self.host}:{self.port}", session, stop, self.emitter)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            await self.handle(str(msg.topic), payload)
