"""Shared fixtures: a real Tansu broker and a real (in-process) ClickHouse engine."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from schemas.settings import Settings
from streams.broker import EmbeddedBroker
from streams.history import HistoryStore
from streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    """A fresh Tansu broker with the contract topics."""
    b = EmbeddedBroker(log_file=tmp_path / "broker.log")
    await b.start()
    await ensure_topics(b.bootstrap)
    try:
        yield b
    finally:
        # Tansu drains open connections for seconds on SIGTERM; its topics are in memory
        # and the test is over: one second, then SIGKILL (5 s per test before).
        await b.stop(timeout_s=1.0)


@pytest.fixture
def settings(tmp_path: Path, broker: EmbeddedBroker) -> Settings:
    """Settings pointing at the test broker and a private data directory."""
    return Settings(data_dir=tmp_path / "data", kafka_bootstrap=broker.bootstrap,
                    sink_batch_window_s=0.3)


@pytest.fixture
def store(settings: Settings) -> Iterator[HistoryStore]:
    """The real ClickHouse engine (chdb) in this process, migrated; closed afterwards so the
    next test may open another directory (one engine path per process)."""
    s = HistoryStore(settings.history_dsn, settings.clickhouse_database).open()
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def child_env(settings: Settings) -> dict[str, str]:
    """Environment for a ``hashplane`` child process with ``settings``."""
    from streams.runtime import settings_env

    return {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}


HASHPLANE = [sys.executable, "-m", "streams.cli"]


async def until(predicate, timeout_s: float = 30.0, every_s: float = 0.2, what: str = ""):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` (sync or async) until truthy; fail with ``what`` on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        await asyncio.sleep(every_s)
