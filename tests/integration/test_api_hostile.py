"""Hostile requests against the API (real broker, real sink, real ClickHouse engine): SQL
that tries to write, read files, reach the network or hold the store; bodies with NaN,
``false`` for a number, separators in pool entries; parameters out of range.  Always a 4xx
with a reason, never a 5xx, never the store's text, and the sink keeps writing."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_api import OP, READ, served

pytestmark = pytest.mark.integration
__all__ = ["served"]


class Listener:
    """A TCP port that counts who connects (a server fetching a URL would)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.sock.close()


async def test_sql_cannot_write_read_files_or_reach_the_network(served: Any,
                                                                tmp_path: Path) -> None:
    client, _, _ = served
    listener = Listener()
    outfile = tmp_path / "leak.txt"
    try:
        refused = {
            "WITH 1 AS x INSERT INTO {db}.events SELECT * FROM {db}.events": "InsertQuery",
            "INSERT INTO {db}.events SELECT * FROM {db}.events": "only one select",
            f"SELECT 1 INTO OUTFILE '{outfile}' APPEND": "INTO OUTFILE",
            f"DESCRIBE TABLE url('http://127.0.0.1:{listener.port}/', CSV, 'a String')":
                "table function url",
            f"SELECT * FROM url('http://127.0.0.1:{listener.port}/x', CSV, 'a String')":
                "table function url",
            "SELECT * FROM file('/etc/passwd', 'LineAsString')": "table function file",
            "SELECT * FROM (SELECT * FROM remote('127.0.0.1', system.one))": "remote",
            "SELECT name FROM system.users": "system.users",
            "SELECT 1 SETTINGS readonly = 0": "SETTINGS",
            "SELECT 1; DROP TABLE {db}.events": "one statement",
            "SELECT * FROM other_db.t": "history database",
        }
        for sql, why in refused.items():
            r = await client.post("/v1/sql", headers=OP, json={"sql": sql})
            assert r.status_code == 422, (sql, r.text)
            assert why.lower() in str(r.json()["detail"]).lower(), (sql, r.text)
        assert listener.connections == 0 and not outfile.exists()
        # reads still work, and the sink can still write (the store is not read-only)
        ok = await client.post("/v1/sql", headers=OP, json={
            "sql": "SELECT count() AS n FROM {db}.events"})
        assert ok.status_code == 200
        tables = await client.post("/v1/sql", headers=OP, json={
            "sql": "SELECT name FROM system.tables WHERE database = 'hashplane' LIMIT 3"})
        assert tables.status_code == 200 and tables.json()["rows"]
        assert (await client.get("/healthz")).json()["history_store"] is True
        assert (await client.get("/v1/asics", headers=READ)).status_code == 200
    finally:
        listener.close()


async def test_huge_answers_are_cut_and_slow_queries_do_not_hold_the_reads(served: Any) -> None:
    client, _, _ = served
    r = await client.post("/v1/sql", headers=OP, json={
        "sql": "SELECT repeat('x', 1000) AS big FROM numbers(10000000)"})  # 10 GB if all read
    assert r.status_code == 200 and r.json()["truncated"] is True, r.text
    assert len(r.content) < 1024 * 1024  # the row cap (100 here) holds the answer
    r = await client.post("/v1/sql", headers=OP, json={  # 6 GiB in one block: refused
        "sql": "SELECT repeat('x', 100000) AS big FROM numbers(100000)"})
    assert r.status_code == 400 and "memory limit" in r.json()["detail"].lower(), r.text
    slow = "SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) % 7 = 3"
    running = [asyncio.create_task(client.post("/v1/sql", headers=OP, json={"sql": slow}))
               for _ in range(2)]
    await asyncio.sleep(0.5)
    t0 = time.perf_counter()
    third = await client.post("/v1/sql", headers=OP, json={"sql": slow})
    assert third.status_code == 429  # two at once: a third is told to come back
    asics = await client.get("/v1/asics", headers=READ)
    health = await client.get("/healthz")
    reads_took = time.perf_counter() - t0
    assert asics.status_code == 200 and health.json()["status"] == "ok"
    for t in running:
        t.cancel()
    print(f"/v1/asics and /healthz answered in {reads_took:.2f} s beside two slow queries")
    # the reads have their own connections: they were not queued behind the slow ones,
    # which run for sql_max_s (10 s)
    assert not any(t.done() and not t.cancelled() for t in running)


async def test_bodies_and_parameters_are_refused_with_a_reason(served: Any) -> None:
    client, _, _ = served
    bad_bodies = [
        ("/v1/site/cap", b'{"limit_kw": false}', "float"),
        ("/v1/site/cap", b'{"limit_kw": NaN}', ""),
        ("/v1/site/cap", b'{"limit_kw": "50"}', "float"),
        ("/v1/asics/a1/power-target", b'{"power_target_w": Infinity}', ""),
        ("/v1/asics/a1/power-target", b'{"power_target_w": 1e300}', "less than"),
        ("/v1/asics/a1/pool", b'{"pool_url": "stratum+tcp://evil:3333,attacker,x"}',
         "pool_url"),
        ("/v1/asics/a1/pool", b'{"pool_url": "stratum+tcp://pool:3333", "worker": "a,b"}',
         "worker"),
        ("/v1/asics/a1/pool", b'{"pool_url": "http://pool:3333"}', "pool_url"),
        ("/v1/asics/a1/pool", b'{"pool_url": "stratum+tcp://pool"}', "pool_url"),
    ]
    for path, body, words in bad_bodies:
        r = await client.post(path, headers={**OP, "content-type": "application/json"},
                              content=body)
        assert r.status_code == 422, (path, body, r.text)
        assert words in r.text, (path, body, r.text)
    for path in ("/v1/compute/jobs?state=nonsense", "/v1/commands?since=1800-01-01T00:00:00Z",
                 "/v1/alerts?until=9999-01-01T00:00:00Z", "/v1/energy?since=0001-01-01"):
        r = await client.get(path, headers=READ)
        assert r.status_code == 422, (path, r.text)
        assert "SELECT" not in r.text
    for state in ("completed", "failed", "started"):  # a valid filter answers
        r = await client.get(f"/v1/compute/jobs?state={state}", headers=READ)
        assert r.status_code == 200, (state, r.text)
