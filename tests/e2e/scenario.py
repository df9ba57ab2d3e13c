"""Shared by the e2e scenario tests: run ``hashplane demo`` as an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from streams.broker import free_port
from tests.conftest import HASHPLANE, ROOT

KEY = "e2e-operator-key"


def run_demo(data: Path, settings: dict[str, str], *args: str, timeout_s: float = 150,
             until: str | None = None) -> str:
    """Run ``hashplane demo --data-dir data`` with ``HASHPLANE_*`` ``settings`` and ``args``
    to its end (``--duration``); return its output; fail if it did not stop cleanly.

    With ``until`` (a SQL query over the history, ``{db}`` for its database, whose first
    value is true once the scenario has played out) the demo is asked, as an operator
    would through the API's ``/v1/sql``, every second, and stopped with Ctrl-C as soon as
    the answer is true; ``--duration`` is then only the upper bound.  What the test asserts
    is read from the history after the stop, so an early stop hides nothing it checks."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), HASHPLANE_API_KEY=KEY,
               **{f"HASHPLANE_{k}": v for k, v in settings.items()})
    proc = subprocess.Popen(
        [*HASHPLANE, "demo", "--data-dir", str(data), "--api-port", str(port), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=data.parent)
    try:
        if until is not None:
            _wait_until(proc, f"http://127.0.0.1:{port}/v1/sql", until, timeout_s)
        out = proc.communicate(timeout=timeout_s)[0].decode()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    return out


def _wait_until(proc: subprocess.Popen[bytes], url: str, sql: str, timeout_s: float) -> None:
    """Poll ``sql`` until its first value is true, then Ctrl-C the demo; return early if it
    ends by itself (its ``--duration``) or ``timeout_s`` passes (communicate fails then)."""
    body = json.dumps({"sql": sql}).encode()
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(1.0)
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-API-Key": KEY})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                rows = json.load(r)["rows"]
        except urllib.error.HTTPError as exc:
            if exc.code == 422:  # the guard refused the query: the test's own mistake
                raise AssertionError(f"until: {exc.read().decode()}") from exc
            continue  # not serving yet (503), or the tables are not there yet (400)
        except (OSError, ValueError, KeyError):
            continue
        if rows and rows[0] and rows[0][0]:
            proc.send_signal(signal.SIGINT)
            return
