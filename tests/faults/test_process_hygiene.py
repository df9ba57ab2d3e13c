"""Processes stop cleanly and leave nothing behind, and refuse a port already taken."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from schemas.settings import Settings
from streams.broker import free_port
from tests.conftest import HASHPLANE, ROOT
from tests.faults.conftest import Broker

pytestmark = pytest.mark.integration


def gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie (exited, not yet reaped by its parent) is gone too
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (FileNotFoundError, IndexError):
            return True
        time.sleep(0.05)
    return False


def test_broker_refuses_a_taken_port_and_leaves_nothing_behind(
        fault_settings: Settings, tmp_path: Path) -> None:
    port = int(fault_settings.kafka_bootstrap.rsplit(":", 1)[1])
    first = Broker(port, fault_settings, tmp_path).start()
    (tansu,) = first.children()
    second = subprocess.run([*HASHPLANE, "broker", "--port", str(port),
                             "--data-dir", str(tmp_path / "other")],
                            env=first.env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "already in use" in second.stderr, second.stderr
    assert first.alive  # the running one is untouched
    assert first.stop() == 0, first.tail()  # SIGTERM: the broker stops with it
    assert gone(tansu), "SIGTERM left the Tansu process running"

    again = Broker(port, fault_settings, tmp_path).start()  # the port is free again
    (tansu,) = again.children()
    again.proc.kill()  # type: ignore[union-attr]  # SIGKILL of the supervisor itself
    again.proc.wait()  # type: ignore[union-attr]
    assert gone(tansu), "a SIGKILLed supervisor left its broker running"


def test_demo_refuses_an_api_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
        env.update(PYTHONPATH=str(ROOT))
        out = subprocess.run([*HASHPLANE, "demo", "--data-dir", str(tmp_path / "d"),
                              "--api-port", str(port), "--kafka-port", str(free_port()),
                              "--asics", "0", "--gpu-rigs", "0", "--duration", "5"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"API port 127.0.0.1:{port} is already in use" in out.stderr
