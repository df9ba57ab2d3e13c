"""NVML on the rig, through the real pynvml (nvidia-ml-py) code path, against a fake
libnvidia-ml.so.1 built here from tests/fakes/fake_nvml.c that answers with recorded cards
(tests/fixtures/nvml/cards.txt names each value's source) and records what it was told."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import alerts
from connectors.base import Emitter, ListSink
from connectors.gpu_backend import GpuBackendError, LocalNvml, NvmlBackend, throttle_names
from connectors.gpu_telemetry import GpuTelemetry
from schemas.events import GpuTelemetryObserved, RecordDeadLettered
from schemas.site import SiteError, parse_site

HERE = Path(__file__).resolve().parent.parent
CARDS = HERE / "fixtures" / "nvml" / "cards.txt"


@pytest.fixture(scope="session")
def libnvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to build the fake NVML library"
    out = tmp_path_factory.mktemp("nvml") / "libnvidia-ml.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(out),
                    str(HERE / "fakes" / "fake_nvml.c")], check=True)
    return out


@pytest.fixture
def nvml(libnvml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake's environment; yields the file its setters are logged to."""
    log = tmp_path / "nvml.log"
    monkeypatch.setenv("FAKE_NVML_CARDS", str(CARDS))
    monkeypatch.setenv("FAKE_NVML_LOG", str(log))
    monkeypatch.delenv("FAKE_NVML_FAULT", raising=False)
    yield log


def test_reads_the_recorded_cards(libnvml: Path, nvml: Path) -> None:
    b = NvmlBackend(str(libnvml))
    assert b.count() == 2
    gtx1060, gtx1080ti = b.read(0), b.read(1)
    # glances#1523's NVML values, converted to our units
    assert (gtx1060.name, gtx1060.temp_c, gtx1060.power_w) == ("GeForce GTX 1060 3GB", 42.0,
                                                                6.697)
    assert (gtx1060.power_limit_w, gtx1060.core_clock_mhz, gtx1060.mem_clock_mhz) == (
        120.0, 721.0, 810.0)
    assert gtx1060.utilization_pct == 5.0
    assert gtx1060.mem_total_mib == pytest.approx(3156738048 / 2**20)
    assert gtx1060.mem_used_mib == pytest.approx(685441024 / 2**20)
    # what the card does not report is None, not a made-up zero
    assert gtx1060.mem_temp_c is None and gtx1060.sm_clock_mhz is None
    assert gtx1060.ecc_uncorrected is None and gtx1060.max_core_clock_mhz is None
    # k8s-device-plugin#331's nvidia-smi -q
    assert gtx1080ti.uuid == "GPU-95ef7c5d-fc11-835b-cd38-2020193cf8e0"
    assert (gtx1080ti.power_limit_min_w, gtx1080ti.power_limit_max_w,
            gtx1080ti.power_limit_default_w) == (125.0, 300.0, 250.0)
    assert (gtx1080ti.max_core_clock_mhz, gtx1080ti.max_mem_clock_mhz) == (1911.0, 5505.0)
    assert gtx1080ti.power_w == 60.06 and gtx1080ti.mem_used_mib is None
    b.close()


def test_power_limit_is_clamped_to_what_nvml_reports_and_read_back(libnvml: Path,
                                                                    nvml: Path) -> None:
    b = NvmlBackend(str(libnvml))
    assert b.set_power_limit(1, 500.0) == 300.0  # above the card's maximum
    assert b.set_power_limit(1, 10.0) == 125.0  # below its minimum
    assert b.set_power_limit(1, 212.5) == 212.5
    assert b.read(1).power_limit_w == 212.5
    assert b.set_power_limit(0, 90.0) == 120.0  # a card whose range is one value
    assert nvml.read_text().split("\n")[:4] == [
        "power_limit 1 300000", "power_limit 1 125000", "power_limit 1 212500",
        "power_limit 0 120000"]


def test_locked_clocks_are_clamped_to_the_cards_maximum(libnvml: Path, nvml: Path) -> None:
    b = NvmlBackend(str(libnvml))
    assert b.set_locked_clocks(1, 2500, 1000) == (1000, 1911)
    b.set_locked_clocks(1, 900, 1200)
    assert b.read(1).core_clock_mhz == 1200.0  # the lock holds the clock
    b.reset_locked_clocks(1)
    assert b.read(1).core_clock_mhz == 1480.0
    assert "locked_clocks 1 1000 1911" in nvml.read_text()
    assert b.set_application_clocks(1, 9000, 1700) == (5505, 1700)  # memory capped at max
    assert "application_clocks 1 5505 1700" in nvml.read_text()
    with pytest.raises(GpuBackendError) as err:  # a card that does not permit them
        b.set_application_clocks(0, 810, 700)
    assert err.value.kind == "not_supported"


def test_a_refused_setter_says_what_it_needs(libnvml: Path, nvml: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    b = NvmlBackend(str(libnvml))
    monkeypatch.setenv("FAKE_NVML_FAULT", "set=4")  # NVML_ERROR_NO_PERMISSION
    with pytest.raises(GpuBackendError) as err:
        b.set_power_limit(1, 200.0)
    assert err.value.kind == "no_permission" and "root" in str(err.value)
    assert not nvml.exists()  # nothing was set
    assert b.read(1).power_limit_w == 250.0


async def test_a_card_off_the_bus_is_a_fault_and_an_alert_and_the_other_is_read(
        libnvml: Path, nvml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVML_FAULT", "lost=1")  # NVML_ERROR_GPU_IS_LOST on GPU 1
    sink = ListSink()
    conn = GpuTelemetry({"rig01": LocalNvml(str(libnvml))},
                        Emitter(sink, source="connector:gpu", site="site-1"))
    await conn.sweep()
    tel = [e for e in sink.events if isinstance(e, GpuTelemetryObserved)]
    dead = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    assert [t.device_id for t in tel] == ["rig01-gpu0"]
    assert tel[0].card == "GeForce GTX 1060 3GB" and tel[0].mem_total_mib
    assert len(dead) == 1 and dead[0].device_id == "rig01-gpu1"
    assert dead[0].source_topic == "nvml://rig01/gpu1"
    assert dead[0].reason.startswith("gpu_lost: ") and "fell off the bus" in dead[0].reason
    _, fired = alerts.step(alerts.AlertState(), dead[0])
    assert [(a.rule, a.severity, a.device_id) for a in fired] == [
        ("gpu_fault", "critical", "rig01-gpu1")]


async def test_no_driver_never_stops_the_connector_and_it_recovers(
        libnvml: Path, nvml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVML_FAULT", "init=9")  # NVML_ERROR_DRIVER_NOT_LOADED
    sink = ListSink()
    backend = LocalNvml(str(libnvml))
    conn = GpuTelemetry({"rig01": backend}, Emitter(sink, source="connector:gpu",
                                                    site="site-1"))
    await conn.sweep()
    dead = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    assert [(d.source_topic, d.device_id) for d in dead] == [("nvml://rig01", "rig01")]
    assert dead[0].reason.startswith("no_driver: ") and "not loaded" in dead[0].reason
    monkeypatch.delenv("FAKE_NVML_FAULT")  # the driver loads
    await conn.sweep()
    assert sorted(e.device_id for e in sink.events if isinstance(e, GpuTelemetryObserved)) == [
        "rig01-gpu0", "rig01-gpu1"]


def test_throttle_reason_bits_by_nvidia_smis_names() -> None:
    # nvml.h: GpuIdle 0x1, SwPowerCap 0x4, HwSlowdown 0x8, SwThermalSlowdown 0x20
    assert throttle_names(0x1 | 0x4) == ("gpu_idle", "sw_power_cap")
    assert throttle_names(0x8 | 0x20) == ("hw_slowdown", "sw_thermal_slowdown")
    assert throttle_names(0) == ()


def test_the_inventory_says_where_a_rigs_nvml_is() -> None:
    rig = {"id": "rig01", "api_url": "http://10.0.0.5:4000"}
    site = parse_site({"rigs": [{**rig, "nvml": "local",
                                 "nvml_library": "/opt/nv/libnvidia-ml.so.1"}]}, {})
    assert (site.rigs[0].nvml, site.rigs[0].nvml_library) == ("local",
                                                              "/opt/nv/libnvidia-ml.so.1")
    with pytest.raises(SiteError, match=r"rigs\[0\]\.nvml"):
        parse_site({"rigs": [{**rig, "nvml": "nvidia"}]}, {})


async def test_xid_errors_are_read_once_and_a_fatal_one_is_a_critical_alert(
        libnvml: Path, nvml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVML_XID", "1:79,1:13")
    b = NvmlBackend(str(libnvml))
    assert b.read(0).xid_errors == ()
    assert b.read(1).xid_errors == (79, 13)  # what arrived since the previous reading
    assert b.read(1).xid_errors == ()  # each once
    monkeypatch.setenv("FAKE_NVML_XID", "0:48")
    sink = ListSink()
    await GpuTelemetry({"rig01": b}, Emitter(sink, source="connector:gpu", site="site-1")).sweep()
    tel = {e.device_id: e for e in sink.events if isinstance(e, GpuTelemetryObserved)}
    assert tel["rig01-gpu0"].xid_errors == [48] and tel["rig01-gpu1"].xid_errors == []
    _, fired = alerts.step(alerts.AlertState(), tel["rig01-gpu0"])
    xid = [a for a in fired if a.rule == "gpu_xid"]
    assert xid and xid[0].severity == "critical" and "double-bit ECC" in xid[0].message
