"""``hashplane doctor``: is this deployment able to run, and if not, what is wrong.

Checks, each a line ``ok``/``warn``/``FAIL`` with what was checked and, when it is not ok,
what to do, in plain words:

* the configuration (``Settings`` from the environment and ``--env-file``) and the site
  inventory (every problem with its place);
* Kafka: reachable, the contract topics created, each partition feed as many partitions as
  its topic;
* ClickHouse: reachable and migrated (the embedded engine: its directory, and whether
  another process holds it);
* the API (``HASHPLANE_STATE_URL``, what a worker restores from), when set;
* every device class the inventory names: ASICs (their RPC port, counted), the grid meter
  (Modbus TCP), the MQTT broker, rigs, the coordinator, model endpoints, the uplink target;
* the local pool's address, and the SMS credentials when SMS is configured.

Network checks are bounded (a short timeout each, 256 at once), so a site of thousands of
miners is checked in seconds.  The exit status is 1 when something FAILs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Status = Literal["ok", "warn", "FAIL"]
TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Finding:
    status: Status
    what: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.status:<4} {self.what}" + (f": {self.detail}" if self.detail else "")


async def reachable(host: str, port: int, timeout_s: float = TIMEOUT_S) -> str:
    """'' when a TCP connection opens, else why not (in words)."""
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s (address wrong, host down or firewalled)"
    except ConnectionRefusedError:
        return "connection refused (nothing listens there)"
    except OSError as exc:
        return exc.strerror or str(exc)
    w.close()
    with contextlib.suppress(Exception):
        await w.wait_closed()
    return ""


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    u = urlsplit(url)
    return u.hostname or "", u.port or default_port


async def check_kafka(bootstrap: str) -> list[Finding]:
    from aiokafka.admin import AIOKafkaAdminClient

    from schemas.registry import TOPICS
    from streams.topics import FED, partition_feed

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if why := await reachable(host, int(port) if port.isdigit() else 9092):
        return [Finding("FAIL", f"Kafka {bootstrap}", f"{why}; start the broker "
                        "(`hashplane broker` on one box) or fix HASHPLANE_KAFKA_BOOTSTRAP")]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        have = set(await admin.list_topics())
        fed = [n for n in FED if n in have and partition_feed(n) in have]
        counts = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(
            [*fed, *map(partition_feed, fed)])} if fed else {}
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return [Finding("FAIL", f"Kafka {bootstrap}", f"answers TCP but not Kafka: {exc}")]
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    # the partition feed's forwarder sends a source partition's records to the same
    # partition of the feed (streams/feed.py PartitionFeed)
    unequal = [Finding("FAIL", f"Kafka {bootstrap}", f"{partition_feed(n)} has "
                       f"{counts.get(partition_feed(n))} partitions and {n} {counts.get(n)}: "
                       f"the share-ratio worker forwards partition p of {n} to partition p of "
                       f"its feed; give both the same count (kafka-topics --alter "
                       f"--partitions)") for n in fed
               if counts.get(n) != counts.get(partition_feed(n))]
    missing = [t.name for t in TOPICS if t.name not in have]
    if missing:
        return [*unequal, Finding(
            "warn", f"Kafka {bootstrap}", f"{len(missing)} contract topics missing "
            f"({', '.join(missing[:4])}...): `hashplane topics --create` (the services also "
            "create them at start)")]
    return unequal or [Finding("ok", f"Kafka {bootstrap}", f"{len(TOPICS)} contract topics")]


def check_clickhouse(dsn: str, database: str) -> list[Finding]:
    from streams.history import MIGRATIONS, HistoryStore

    where = dsn.split("@")[-1]  # never print a password
    if dsn.startswith("chdb:") and not Path(dsn.removeprefix("chdb://")).exists():
        return [Finding("warn", f"ClickHouse {where}", "no embedded history here yet (`up` "
                        "and `demo` create it); on a cluster set HASHPLANE_CLICKHOUSE_DSN")]
    store = HistoryStore(dsn, database)
    try:
        store.open()
        rows = store.query(f"SELECT max(version) FROM {database}.schema_migrations")
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        text = str(exc).splitlines()[0][:300]
        if "UNKNOWN_DATABASE" in text or "UNKNOWN_TABLE" in text:
            return [Finding("warn", f"ClickHouse {where}", f"reachable, database {database} "
                            "not migrated: `hashplane migrate` (`up` does it at start)")]
        hint = ("the embedded engine's directory is held by another process (`up` owns it "
                "on one box): check through the API instead" if dsn.startswith("chdb:")
                else "start clickhouse-server or fix HASHPLANE_CLICKHOUSE_DSN")
        return [Finding("FAIL", f"ClickHouse {where}", f"{text}; {hint}")]
    finally:
        with contextlib.suppress(Exception):
            store.close()
    version, want = int(rows[0][0] or 0), MIGRATIONS[-1].version
    if version < want:
        return [Finding("warn", f"ClickHouse {where}", f"schema at migration {version} of "
                        f"{want}: `hashplane migrate`")]
    return [Finding("ok", f"ClickHouse {where}", f"database {database}, migration {version}")]


async def check_http(name: str, url: str, path: str = "") -> Finding:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as c:
            r = await c.get(url.rstrip("/") + path)
    except httpx.HTTPError as exc:
        return Finding("FAIL", f"{name} {url}", f"{type(exc).__name__}: {exc or 'no answer'}")
    if r.status_code >= 500:
        return Finding("FAIL", f"{name} {url}", f"HTTP {r.status_code}")
    return Finding("ok", f"{name} {url}", f"HTTP {r.status_code}")


async def check_devices(site: object) -> list[Finding]:
    """One line per device class the inventory names."""
    from schemas.site import Site

    assert isinstance(site, Site)
    out: list[Finding] = []
    slots = asyncio.Semaphore(256)

    async def probe(host: str, port: int) -> str:
        async with slots:
            return await reachable(host, port)

    if site.asics:
        whys = await asyncio.gather(*(probe(a.host, a.port) for a in site.asics))
        down = [f"{a.id} ({a.host}:{a.port}: {w})" for a, w in zip(site.asics, whys,
                                                                     strict=True) if w]
        n = len(site.asics)
        if not down:
            out.append(Finding("ok", f"ASICs {n}", "every RPC port answers"))
        else:
            out.append(Finding("FAIL" if len(down) == n else "warn",
                               f"ASICs {n - len(down)} of {n} answer",
                               f"{len(down)} do not: " + "; ".join(down[:5])
                               + (" ..." if len(down) > 5 else "")))
    if (m := site.meter) is not None:
        why = await probe(m.host, m.port)
        out.append(Finding("FAIL" if why else "ok", f"grid meter {m.host}:{m.port}",
                           why or "Modbus TCP port answers"))
    if (q := site.mqtt) is not None:
        why = await probe(q.host, q.port)
        out.append(Finding("FAIL" if why else "ok", f"MQTT broker {q.host}:{q.port}",
                           why and f"{why}; the power feeds cannot be read"))
    for r in site.rigs:
        out.append(await check_http(f"rig {r.id}", str(r.api_url)))
    if (co := site.coordinator) is not None:
        out.append(await check_http("coordinator", str(co.url)))
    for e in site.model_endpoints:
        out.append(await check_http(f"model endpoint {e.name}", str(e.url)))
    if (u := site.uplink) is not None:
        f = await check_http("uplink", str(u.url))
        # the internet being down is what the failover is for: a warning, not a failure
        out.append(Finding("warn", f.what, f.detail + "; the site runs on the local pool")
                   if f.status == "FAIL" else f)
    return out


async def diagnose(site_path: str | None, environ: Mapping[str, str]) -> list[Finding]:
    from pydantic import ValidationError

    from schemas.settings import Settings
    from schemas.site import SiteError, load_site

    try:
        s = Settings()
    except ValidationError as exc:
        return [Finding("FAIL", "configuration", "; ".join(
            f"HASHPLANE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
            for e in exc.errors()))]
    out = [Finding("ok", "configuration", f"site {s.site}, data in {s.data_dir}")]
    site = None
    if site_path:
        try:
            site = load_site(site_path, environ)
            out.append(Finding("ok", f"inventory {site_path}", "; ".join(
                " ".join(line.split()) for line in site.summary()[:3])))
        except SiteError as exc:
            out.append(Finding("FAIL", f"inventory {site_path}",
                               "; ".join(exc.problems[:10])
                               + (" ..." if len(exc.problems) > 10 else "")))
    out += await check_kafka(s.kafka_bootstrap)
    out += await asyncio.to_thread(check_clickhouse, s.history_dsn, s.clickhouse_database)
    if s.state_url:
        out.append(await check_http("API", s.state_url, "/healthz"))
    if site is not None:
        out += await check_devices(site)
        from streams.broker import port_in_use

        host, port = _host_port(s.local_pool_url, 3333)
        if port_in_use(s.local_pool_bind, port):
            out.append(Finding("warn", f"local pool port {port}",
                               "already taken (a running hashplane's pool, or another program)"))
        else:
            out.append(Finding("ok", f"local pool {s.local_pool_bind}:{port}",
                               f"free; miners will be given {host}:{port}"))
    if s.sms_to:
        missing = [k for k in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN") if not environ.get(k)]
        out.append(Finding("FAIL" if missing or not s.sms_from else "ok",
                           f"SMS to {len(s.sms_to)} number(s)",
                           f"{', '.join(missing) or 'HASHPLANE_SMS_FROM'} not set"
                           if missing or not s.sms_from else "Twilio credentials set"))
    return out


def run_doctor(site_path: str | None) -> int:
    """Print every finding; 1 when one FAILs."""
    findings = asyncio.run(diagnose(site_path, os.environ))
    for f in findings:
        print(f.line(), flush=True)
    failed = sum(f.status == "FAIL" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    print(f"{len(findings)} checks, {failed} failed, {warned} warnings")
    return 1 if failed else 0

