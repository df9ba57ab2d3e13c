"""Alert sinks: the twilio library against a local fake of Twilio's Messages API (the one
thing that cannot run here), a real local webhook receiver, retries and dead letters."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs
from uuid import uuid4

import pytest

from connectors.alert_sinks import (
    AlertDispatcher,
    DeliveryError,
    Retry,
    SmsPolicy,
    TwilioSms,
    Webhook,
    parse_quiet_hours,
    sms_text,
)
from connectors.base import Emitter, ListSink
from schemas.alerts import AlertFired, AlertResolved
from schemas.events import RecordDeadLettered
from streams.codec import encode
from tests.conftest import until
from tests.factories import sample


class FakeProvider:
    """Records POSTs; answers ``fail`` times with ``fail_status`` first."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.fail, self.fail_status = 0, 500
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                form = ({k: v[0] for k, v in parse_qs(body).items()}
                        if "form" in self.headers.get("content-type", "") else json.loads(body))
                provider.requests.append((self.path, form, dict(self.headers)))
                if provider.fail > 0:
                    provider.fail -= 1
                    self._answer(provider.fail_status, {"code": 20500, "message": "down",
                                                        "status": provider.fail_status})
                    return
                self._answer(201, {"sid": f"SM{len(provider.requests):032d}", "status": "queued",
                                   "to": form.get("To"), "from": form.get("From"),
                                   "body": form.get("Body"), "account_sid": "ACtest"})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def messages(self) -> list[dict[str, Any]]:
        return [form for path, form, _ in self.requests if path.endswith("/Messages.json")]


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    p = FakeProvider()
    yield p
    p.server.shutdown()


def alert(rule: str = "grid_frequency_low", severity: str = "critical",
          resolved: bool = False) -> Any:
    return sample(AlertResolved if resolved else AlertFired, rule=rule, severity=severity,
                  message=f"{rule} text", device_id="meter", dedup_key=f"{rule}/meter")


async def no_wait(_: float) -> None:
    return None


def sms(provider: FakeProvider, **kw: Any) -> TwilioSms:
    return TwilioSms(["+15550001", "+15550002"], "+15559999", "site-1", base_url=provider.url,
                     account_sid="ACtest", auth_token="secret", **kw)


async def test_sms_goes_through_twilio_to_every_recipient_with_credentials(
        provider: FakeProvider) -> None:
    d = AlertDispatcher("unused:9092", "g", [sms(provider)],
                        Emitter(ListSink(), source="t", site="site-1"), Retry(sleep=no_wait))
    await d.dispatch(encode(alert()), b"meter")
    msgs = provider.messages()
    assert [m["To"] for m in msgs] == ["+15550001", "+15550002"]
    assert msgs[0]["From"] == "+15559999" and "[CRITICAL] grid_frequency_low" in msgs[0]["Body"]
    path, _, headers = provider.requests[0]
    assert path == "/2010-04-01/Accounts/ACtest/Messages.json"
    assert headers["Authorization"].startswith("Basic ")  # the account's credentials


async def test_rate_limit_gathers_a_digest_per_recipient(provider: FakeProvider) -> None:
    s = sms(provider, min_interval_s=3600)
    now = [5.0]  # the dispatcher's clock: a machine booted seconds ago is fine
    d = AlertDispatcher("unused:9092", "g", [s], Emitter(ListSink(), source="t", site="site-1"),
                        Retry(sleep=no_wait), clock=lambda: now[0])
    for a in (alert(), alert("uplink_down"), alert("uplink_down", resolved=True)):
        await d.dispatch(encode(a), b"k")
    assert len(provider.messages()) == 2  # the first alert, once per recipient
    now[0] += 3599.0
    await d.tick()
    assert len(provider.messages()) == 2  # still inside the interval: gathered
    now[0] += 1.0  # the interval has passed
    await d.tick()
    digest = provider.messages()[2:]
    assert len(digest) == 2 and digest[0]["Body"].startswith("hashplane site-1: 2 alerts")
    assert "[RESOLVED] uplink_down" in digest[0]["Body"]


async def test_provider_errors_are_retried_then_dead_lettered(provider: FakeProvider) -> None:
    sink = ListSink()
    waits: list[float] = []

    async def record(s: float) -> None:
        waits.append(s)

    d = AlertDispatcher("unused:9092", "g", [sms(provider, min_interval_s=0)],
                        Emitter(sink, source="t", site="site-1"),
                        Retry(attempts=4, first_s=0.5, max_s=1.5, jitter=0.0, sleep=record))
    provider.fail = 2
    await d.dispatch(encode(alert()), b"k")
    assert len(provider.messages()) == 4 and d.dead == 0  # 2 failed, then both sent
    assert {m["Body"] for m in provider.messages()[2:]} == {provider.messages()[0]["Body"]}
    assert waits == [0.5, 1.0]
    provider.fail = 100
    waits.clear()
    await d.dispatch(encode(alert("uplink_down")), b"k")
    dead = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    assert len(dead) == 1 and "not delivered after 4 attempts" in dead[0].reason
    assert "HTTP 500" in dead[0].reason or "500" in dead[0].reason
    assert waits == [0.5, 1.0, 1.5]  # capped


async def test_webhook_posts_the_alert_json_and_bad_records_go_to_dlq(
        provider: FakeProvider) -> None:
    sink = ListSink()
    d = AlertDispatcher("unused:9092", "g", [Webhook(provider.url + "/hook")],
                        Emitter(sink, source="t", site="site-1"), Retry(sleep=no_wait))
    a = alert()
    await d.dispatch(encode(a), b"k")
    await d.dispatch(b"not json", b"k")
    path, body, _ = provider.requests[0]
    assert path == "/hook" and body["event_id"] == str(a.event_id) and body["kind"] == "AlertFired"
    assert [type(e) for e in sink.events] == [RecordDeadLettered]


def test_digest_text_is_sms_sized() -> None:
    many = [alert(f"rule_{i}") for i in range(50)]
    assert len(sms_text(many, "site-1")) <= 640


def test_retry_waits_are_jittered_and_capped() -> None:
    import random

    waits: list[float] = []

    async def record(x: float) -> None:
        waits.append(x)

    async def fails() -> None:
        raise DeliveryError("down")

    r = Retry(attempts=6, first_s=1.0, max_s=4.0, jitter=0.5, sleep=record,
              rng=random.Random(7))
    assert asyncio.run(r.run(fails)) == "down"
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert waits != ceilings  # drawn, not fixed: sinks that failed together spread out


async def test_sms_by_severity_and_per_rule_and_every_alert_to_the_webhook(
        provider: FakeProvider) -> None:
    policy = SmsPolicy(rules={"uplink_down": False, "feed_silent": True})
    d = AlertDispatcher("unused:9092", "g", [sms(provider, min_interval_s=0, policy=policy),
                                             Webhook(provider.url + "/hook")],
                        Emitter(ListSink(), source="t", site="site-1"), Retry(sleep=no_wait))
    for a in (alert("grid_frequency_low"), alert("over_temperature", "warning"),
              alert("uplink_down"), alert("feed_silent", "warning")):
        await d.dispatch(encode(a), b"k")
    texted = [m["Body"] for m in provider.messages() if m["To"] == "+15550001"]
    assert len(texted) == 2 and "grid_frequency_low" in texted[0] and "feed_silent" in texted[1]
    hooked = [body["rule"] for path, body, _ in provider.requests if path == "/hook"]
    assert hooked == ["grid_frequency_low", "over_temperature", "uplink_down", "feed_silent"]


async def test_resolutions_go_as_one_digest(provider: FakeProvider) -> None:
    now = [10.0]
    s = sms(provider, min_interval_s=0, policy=SmsPolicy(resolution_digest_s=300))
    s.recipients, s.pending = ["+15550001"], {"+15550001": []}
    d = AlertDispatcher("unused:9092", "g", [s], Emitter(ListSink(), source="t", site="site-1"),
                        Retry(sleep=no_wait), clock=lambda: now[0])
    for rule in ("uplink_down", "grid_frequency_low"):
        await d.dispatch(encode(alert(rule)), b"k")
    for rule in ("uplink_down", "grid_frequency_low"):
        await d.dispatch(encode(alert(rule, resolved=True)), b"k")
        now[0] += 60
    assert len(provider.messages()) == 2  # the two firings; the resolutions wait
    assert d.done() < d.seq  # and their offsets are not committed while they wait
    now[0] += 300
    await d.tick()
    (digest,) = provider.messages()[2:]
    assert digest["Body"].startswith("hashplane site-1: 2 alerts")
    assert digest["Body"].count("[RESOLVED]") == 2
    assert d.done() == d.seq


async def test_quiet_hours_hold_all_but_critical_until_they_end(provider: FakeProvider) -> None:
    from datetime import UTC, datetime

    wall = [datetime(2026, 12, 1, 23, 30, tzinfo=UTC)]  # 00:30 in Berlin: quiet
    policy = SmsPolicy(severities=frozenset({"warning", "critical"}),
                       quiet=parse_quiet_hours("22:00-06:00"), timezone="Europe/Berlin")
    s = sms(provider, min_interval_s=0, policy=policy, wall=lambda: wall[0])
    d = AlertDispatcher("unused:9092", "g", [s], Emitter(ListSink(), source="t", site="site-1"),
                        Retry(sleep=no_wait))
    await d.dispatch(encode(alert("over_temperature", "warning")), b"k")
    assert provider.messages() == []
    await d.dispatch(encode(alert("grid_frequency_low", "critical")), b"k")
    assert [("grid_frequency_low" in m["Body"]) for m in provider.messages()] == [True, True]
    wall[0] = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)  # 06:00 in Berlin: over
    await d.tick()
    assert all("over_temperature" in m["Body"] for m in provider.messages()[2:])
    assert len(provider.messages()) == 4
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        parse_quiet_hours("late")


async def test_an_alert_from_the_agent_and_from_prometheus_is_sent_once(
        provider: FakeProvider) -> None:
    d = AlertDispatcher("unused:9092", "g", [sms(provider, min_interval_s=0)],
                        Emitter(ListSink(), source="t", site="site-1"), Retry(sleep=no_wait))
    agent = alert("uplink_down")
    prom = agent.model_copy(update={"event_id": uuid4(), "source": "alertmanager",
                                    "rule": "HashplaneUplinkDown"})
    for a in (agent, prom, agent.model_copy(update={"event_id": uuid4()})):  # and a redelivery
        await d.dispatch(encode(a), b"k")
    assert len(provider.messages()) == 2  # one per recipient
    done = alert("uplink_down", resolved=True)
    for a in (done, done.model_copy(update={"event_id": uuid4(), "source": "alertmanager"})):
        await d.dispatch(encode(a), b"k")
    await d.dispatch(encode(agent.model_copy(update={"event_id": uuid4()})), b"k")  # fires again
    assert d.dedup.firing and len(d.dedup.resolved) == 0


async def test_a_dead_webhook_delays_only_its_own_deliveries(provider: FakeProvider) -> None:
    released = asyncio.Event()
    waited: list[float] = []

    async def hold(s: float) -> None:  # the webhook's retry waits until the test says
        waited.append(s)
        await released.wait()

    dead_hook = FakeProvider()
    dead_hook.fail = 10**6
    try:
        d = AlertDispatcher("unused:9092", "g",
                            [Webhook(dead_hook.url + "/hook"), sms(provider, min_interval_s=0)],
                            Emitter(ListSink(), source="t", site="site-1"),
                            Retry(attempts=3, sleep=hold))
        d.running = True
        stop = asyncio.Event()
        lanes = [asyncio.create_task(lane.run(stop, poll_s=0.05)) for lane in d.lanes]
        for rule in ("grid_frequency_low", "uplink_down"):
            await d.dispatch(encode(alert(rule)), b"k")
        def texted() -> bool:  # each recipient has both (one by one, or as a digest)
            bodies = "".join(m["Body"] for m in provider.messages() if m["To"] == "+15550002")
            return "grid_frequency_low" in bodies and "uplink_down" in bodies

        # both SMS out while the webhook lane sits in its retry wait (``hold`` returns only
        # once released below): the SMS did not wait for it
        await until(lambda: texted() and waited, 30, 0.02, what="both alerts texted")
        assert d.done() == 0  # the webhook holds the first alert: nothing is committed
        released.set()
        await until(lambda: d.done() == d.seq, 30, 0.02, what="the webhook's dead letters")
        assert d.dead == 2
        stop.set()
        await asyncio.gather(*lanes)
    finally:
        dead_hook.server.shutdown()
