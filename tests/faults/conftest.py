"""Fault injection: every part runs as its own process on loopback, as on an operator's box,
and the tests SIGKILL and restart them (and the broker) at chosen moments, then count.

``HASHPLANE_SOAK=1`` makes the soak test (tests/faults/test_soak.py) run; the rest run in
every suite."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.settings import Settings
from streams.broker import free_port
from streams.codec import DecodeError, decode
from tests.conftest import HASHPLANE, child_env


class Proc:
    """One hashplane process: start, SIGKILL, restart; its output goes to a log file."""

    def __init__(self, name: str, args: list[str], settings: Settings, logdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.args, self.settings, self.logdir = name, args, settings, logdir
        self.env = {**child_env(settings), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.logdir / f"{self.name}.log"

    def start(self) -> Proc:
        self.starts += 1
        out = open(self.log, "ab")
        out.write(f"\n=== start {self.starts} ===\n".encode())
        out.flush()
        self.proc = subprocess.Popen([*HASHPLANE, *self.args], env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop on SIGTERM within {timeout_s}s:\n"
                                 + self.tail()) from None

    def children(self) -> list[int]:
        """Pids of the process's children (the broker supervisor's Tansu)."""
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


class Broker(Proc):
    """``hashplane broker``: the supervised Tansu broker on a fixed port."""

    def __init__(self, port: int, settings: Settings, logdir: Path) -> None:
        super().__init__("broker", ["broker", "--port", str(port)], settings, logdir)
        self.port = port

    def start(self) -> Broker:
        super().start()
        deadline = time.monotonic() + 30
        mark = f"=== start {self.starts} ==="
        while True:
            text = self.log.read_text(errors="replace")
            if "broker ready" in text[text.rfind(mark):]:
                return self
            assert self.alive, self.tail()
            assert time.monotonic() < deadline, "broker not ready:\n" + self.tail()
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the supervisor and its broker at once (a power cut)."""
        children = self.children() if self.alive else []
        super().kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def kill_tansu(self) -> None:
        """SIGKILL the broker process itself: its supervisor starts it again, empty."""
        (pid,) = self.children()
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def fault_settings(tmp_path: Path) -> Settings:
    """Settings for a site whose parts are separate processes on one fixed broker port."""
    port = free_port()
    return Settings(data_dir=tmp_path / "data", kafka_bootstrap=f"127.0.0.1:{port}",
                    sink_batch_window_s=0.3, sink_retry_max_s=2.0,
                    worker_session_timeout_s=1.5, worker_rebalance_timeout_s=1.5,
                    worker_heartbeat_interval_s=0.3, log_level=os.environ.get("FAULT_LOG", "INFO"))


@pytest.fixture
def spawn(fault_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start a hashplane process (``spawn(name, *args, settings=..., env=...)``); whatever
    is still running at the end of the test is killed."""
    started: list[Proc] = []

    def make(name: str, *args: str, settings: Settings | None = None,
             env: dict[str, str] | None = None) -> Proc:
        p = Proc(name, list(args), settings or fault_settings, tmp_path, env).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.kill()


@pytest.fixture
def broker_proc(fault_settings: Settings, tmp_path: Path) -> Iterator[Broker]:
    port = int(fault_settings.kafka_bootstrap.rsplit(":", 1)[1])
    b = Broker(port, fault_settings, tmp_path).start()
    try:
        yield b
    finally:
        b.stop()


async def read_topic(bootstrap: str, topic: str, idle_s: float = 1.0,
                     timeout_s: float = 30.0) -> list[tuple[TopicPartition, int, object]]:
    """Every record of a topic now: (partition, offset, decoded event or DecodeError).
    Reads up to the high watermark each fetch reports (records keep arriving on a live
    topic), or until nothing arrives for ``idle_s``."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[TopicPartition, int, object]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline, quiet = loop.time() + timeout_s, loop.time() + idle_s
        while loop.time() < min(deadline, quiet):
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                quiet = loop.time() + idle_s
                for r in records:
                    try:
                        out.append((tp, r.offset, decode(topic, r.value)))
                    except DecodeError as exc:
                        out.append((tp, r.offset, exc))
            caught_up = bool(consumer.assignment())
            for tp in consumer.assignment():
                hw = consumer.highwater(tp)
                if hw is None or await consumer.position(tp) < hw:
                    caught_up = False
            if caught_up:
                break
    finally:
        await consumer.stop()
    return out
