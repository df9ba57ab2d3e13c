"""Feed sensors over MQTT with a username, a password and TLS, as an inventory's
``mqtts://`` broker asks: a real broker (amqtt) with a password file and a TLS listener."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
from pathlib import Path

import aiomqtt
import pytest
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connectors.base import Emitter, ListSink
from connectors.mqtt_power import PowerSensors, SensorMapping, tls_context
from schemas.events import FeedPowerMeasured
from streams.broker import free_port

TOPIC = "site-1/power/feed-v/state"


def self_signed(d: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)  # valid whatever the clock says
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=365 * 50))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
async def secure_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    from amqtt.broker import Broker

    cert, key = self_signed(tmp_path)
    (tmp_path / "passwd").write_text(f"sensor:{PasswordHasher().hash('s3cret')}\n"
                                     f"hashplane:{PasswordHasher().hash('hp-pw')}\n")
    port = free_port()
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "ssl": True,
                                  "certfile": str(cert), "keyfile": str(key)}},
        "plugins": {"amqtt.plugins.authentication.FileAuthPlugin": {
            "password_file": str(tmp_path / "passwd")}}})
    await broker.start()
    yield port, cert
    await broker.shutdown()


async def publish(port: int, cert: Path, payload: dict[str, float]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, username="sensor", password="s3cret",
                              tls_context=tls_context(str(cert))) as c:
        await c.publish(TOPIC, json.dumps(payload).encode(), qos=1, retain=True)


async def test_the_sensors_connect_with_credentials_and_tls_and_use_the_nameplate(
        secure_broker: tuple[int, Path]) -> None:
    port, cert = secure_broker
    # a volts-and-amps sensor: no power_kw, no capacity_kw
    await publish(port, cert, {"voltage_v": 400.0, "current_a": 100.0})
    sink = ListSink()
    conn = PowerSensors("127.0.0.1", port, [SensorMapping(TOPIC, "feed-v", capacity_kw=150.0)],
                        Emitter(sink, source="t", site="site-1"), username="hashplane",
                        password="hp-pw", tls=tls_context(str(cert)))
    stop = asyncio.Event()
    task = asyncio.create_task(conn.run(stop))
    for _ in range(100):
        if sink.events:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 10)
    (r,) = [e for e in sink.events if isinstance(e, FeedPowerMeasured)]
    assert r.capacity_kw == 150.0 and r.power_kw == pytest.approx(69.28, abs=0.01)


async def test_a_wrong_password_is_retried_and_counted_never_a_stopped_connector(
        secure_broker: tuple[int, Path]) -> None:
    port, cert = secure_broker
    sink = ListSink()
    emitter = Emitter(sink, source="t", site="site-1")
    conn = PowerSensors("127.0.0.1", port, [SensorMapping(TOPIC, "feed-v")], emitter,
                        username="hashplane", password="wrong", tls=tls_context(str(cert)))
    stop = asyncio.Event()
    task = asyncio.create_task(conn.run(stop))
    for _ in range(100):
        if emitter.stats.errors >= 2:
            break
        await asyncio.sleep(0.05)
    assert not task.done(), "the connector keeps trying"
    stop.set()
    await asyncio.wait_for(task, 10)
    assert emitter.stats.errors >= 2 and not sink.events
    assert "MQTT" in emitter.stats.last_error
