"""Alert sinks: the twilio library against a local fake of Twilio's Messages API (the one
thing that cannot run here), a real local webhook receiver, retries and dead letters."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from connectors.alert_sinks import AlertDispatcher, Retry, TwilioSms, Webhook, sms_text
from connectors.base import Emitter, ListSink
from schemas.alerts import AlertFired, AlertResolved
from schemas.events import RecordDeadLettered
from streams.codec import encode
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
                  message=f"{rule} text", device_id="meter")


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
                        Retry(attempts=4, first_s=0.5, max_s=1.5, sleep=record))
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
