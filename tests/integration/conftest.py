"""Fixtures shared by the integration tests: the control-loop settings and a real Faust
worker (``hashplane worker``) on the test broker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from schemas.settings import Settings
from tests.conftest import HASHPLANE, child_env


@pytest.fixture
def control_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "energy_emit_s": 0.0, "energy_margin_kw": 0.0, "sched_min_on_s": 0.0,
        "sched_hysteresis_kw": 1.0, "uplink_down_after": 2, "command_ttl_s": 60.0,
        "supply_feeds": ["feed-a"],
        # recorded streams at a fixed past time: the fold's rules alone, not the live
        # agent's guard against deciding on the past
        "energy_warmup_s": 0.0, "energy_max_age_s": 0.0})


@pytest.fixture
def worker(control_settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([*HASHPLANE, "worker"], env=child_env(control_settings),
                            stdout=log, stderr=subprocess.STDOUT)
    yield proc
    proc.terminate()
    assert proc.wait(30) == 0, (tmp_path / "worker.log").read_text()[-3000:]
