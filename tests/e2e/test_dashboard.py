"""The operator's morning: `hashplane demo` running, the dashboard opened in headless Chromium
(Debian's /usr/bin/chromium driven by Playwright; the page loads no script from the internet),
charts rendered with data, a screenshot saved; then a site curtailment through the API goes
through the energy agent and the scheduler to the ASIC actuator, and /metrics shows it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.broker import free_port
from tests.conftest import HASHPLANE, ROOT

CHROMIUM = "/usr/bin/chromium"
KEY = "dash-operator-key"
CHARTS = ("frequency", "energy", "hashrate", "shares", "gpu")
PANELS = ("price", "profit", "uplink", "tuner", "fleet")
SCREENSHOT = ROOT / "var" / "screenshots" / "dashboard.png"


@pytest.fixture
def demo(tmp_path: Path) -> Any:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), HASHPLANE_API_KEY=KEY, HASHPLANE_SCHED_MIN_ON_S="0",
               HASHPLANE_SCHED_MIN_OFF_S="0", HASHPLANE_ASIC_POLL_S="2",
               HASHPLANE_PROFIT_WINDOW_S="10", HASHPLANE_PROFIT_GRACE_S="2")
    proc = subprocess.Popen(
        [*HASHPLANE, "demo", "--data-dir", str(tmp_path / "demo"), "--api-port", str(port),
         "--asics", "40", "--gpu-rigs", "2", "--asic-base-ip", "127.0.201.1",
         "--duration", "170"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).json()["live_feed"]:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=90)[0].decode()
        assert proc.returncode == 0, out[-3000:]


def test_dashboard_renders_live_data_offline_and_a_curtailment_reaches_the_miners(
        demo: str) -> None:
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), (
        "headless Chromium is needed: `make install-test` installs Debian's chromium as root")
    from playwright.sync_api import sync_playwright

    external: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.on("request", lambda r: external.append(r.url)
                if not r.url.startswith(demo) else None)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(demo + "/")
        # the key is asked for once...
        page.fill("#key", KEY)
        page.click("#login button[type=submit]")
        for chart in CHARTS:
            page.wait_for_function(
                f"Number(document.body.dataset['{chart}'] || 0) > 0", timeout=90_000)
        page.wait_for_function("document.getElementById('live').textContent === 'live'",
                               timeout=20_000)
        # ...and kept: a reload goes straight to the charts
        page.reload()
        page.wait_for_function("Number(document.body.dataset['energy'] || 0) > 0",
                               timeout=30_000)
        assert page.is_hidden("#login")
        drawn = page.evaluate("window.hashplane.rendered")
        n_traces = page.evaluate(
            "document.querySelectorAll('#chart-energy .scatterlayer .trace').length")
        # live updates arrive over the stream: the energy chart keeps growing
        before = drawn["energy"]
        page.wait_for_function(f"window.hashplane.rendered.energy > {before}", timeout=20_000)

        # an operator curtails the site through the API
        h = {"Authorization": f"Bearer {KEY}"}
        cap = httpx.post(f"{demo}/v1/site/cap", headers=h, params={"wait_s": 15},
                         json={"limit_kw": 30, "reason": "test curtailment"}, timeout=30)
        assert cap.status_code == 202, cap.text
        assert cap.json()["ack"]["status"] == "applied", cap.json()
        assert cap.json()["ack"]["actuator"] == "agent:energy"
        deadline = time.monotonic() + 60
        sleeping: list[Any] = []
        while time.monotonic() < deadline:
            cmds = httpx.get(f"{demo}/v1/commands", headers=h,
                             params={"kind": "SleepAsic", "status": "applied"}, timeout=10)
            sleeping = cmds.json()["commands"]
            if len(sleeping) >= 30:
                break
            time.sleep(1)
        assert len(sleeping) >= 30, sleeping[:3]
        assert {c["issued_by"] for c in sleeping} == {"agent:scheduler"}
        assert {c["ack"]["actuator"] for c in sleeping} == {"actuator:asic"}
        energy: dict[str, Any] = {}
        deadline = time.monotonic() + 20  # the history is behind Kafka by the sink's batch
        while time.monotonic() < deadline:
            body = httpx.get(f"{demo}/v1/energy", headers=h, params={"bucket_s": 1},
                             timeout=10).json()
            energy = body["latest"]
            if energy["cap_kw"] == 30:
                break
            time.sleep(1)
        assert energy["cap_kw"] == 30 and energy["target_load_kw"] <= 30, (
            energy, [(p["ts"], p["cap_kw"], p["target_load_kw"]) for p in body["history"][-15:]])
        page.wait_for_function("window.hashplane.commands.size >= 30", timeout=30_000)

        # the operator's money and fleet panels: prices from the simulated market, profit
        # windows closed by the profit agent, the uplink, the GPUs' profiles
        for panel in PANELS:
            page.wait_for_function(
                f"Number(document.body.dataset['{panel}'] || 0) > 0", timeout=60_000)
        assert "hashprice 0.05/TH/s/day" in page.inner_text("#price-now")
        # a probe that failed under load (a ReadError on these 2 cores) shows DOWN until the
        # next one: the panel must show the uplink up within a few probes, not at one instant
        page.wait_for_function(
            "document.querySelector('#uplink').innerText.startsWith('uplink\\tup')",
            timeout=30_000)
        assert page.inner_text("#uplink").startswith("uplink\tup")
        # the fleet table filters and sorts: by firmware, then by power, highest first
        fleet = httpx.get(f"{demo}/v1/asics", headers=h, params={"limit": 1000},
                          timeout=10).json()["asics"]
        braiins = sum(1 for a in fleet if a["firmware"] == "braiins")
        page.fill("#fleet-filter", "braiins")
        page.wait_for_function(f"document.body.dataset.fleetShown === '{braiins}'",
                               timeout=10_000)
        assert braiins > 0 and set(page.eval_on_selector_all(
            "#fleet tbody tr td:nth-child(2)", "tds => tds.map(td => td.textContent)")) == {
                "braiins"}
        page.fill("#fleet-filter", "SleepAsic")
        page.wait_for_function("Number(document.body.dataset.fleetShown) >= 30", timeout=20_000)
        page.fill("#fleet-filter", "")
        page.click("#fleet th[data-key=power_kw]")
        page.click("#fleet th[data-key=power_kw]")
        powers = [float(x) for x in page.eval_on_selector_all(
            "#fleet tbody tr td:nth-child(8)", "tds => tds.map(td => td.textContent)")]
        assert powers == sorted(powers, reverse=True) and len(powers) == len(fleet)
        page.wait_for_timeout(1500)  # the commands chart redraws every second
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        browser.close()

    assert not errors, errors
    assert external == [], f"the dashboard fetched from outside the API: {external}"
    assert all(drawn[c] > 0 for c in CHARTS), drawn
    assert n_traces == 5
    assert SCREENSHOT.stat().st_size > 50_000

    metrics = httpx.get(f"{demo}/metrics", headers={"Authorization": f"Bearer {KEY}"},
                        timeout=10).text
    assert 'hashplane_command_acks_total{command_kind="CapSiteLoad",status="applied"} 1.0' \
        in metrics
    assert 'hashplane_command_latency_seconds_count{command_kind="SleepAsic"}' in metrics
    assert 'hashplane_connector_events_total{connector="connector:asic"}' in metrics
    assert "hashplane_sink_rows_total" in metrics
