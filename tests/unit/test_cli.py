"""The command line as a person meets it: the real entry point in a child process, its
settings report, its refusals and its one-line errors (no traceback), and the progress of long
jobs (the clock is an input)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from streams.progress import Progress
from tests.conftest import ROOT


def hashplane(*args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd or ROOT,
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_config_names_where_each_setting_came_from(tmp_path: Path) -> None:
    env_file = tmp_path / "site.env"
    env_file.write_text("# the site\nHASHPLANE_SMS_FROM=+15550100\nHASHPLANE_SITE=from-file\n")
    (tmp_path / ".env").write_text("HASHPLANE_ASIC_POLL_S=7\n")
    r = hashplane("config", "--json", "--env-file", str(env_file), "--data-dir",
                  str(tmp_path / "d"), cwd=tmp_path,
                  env={"HASHPLANE_SITE": "from-env", "HASHPLANE_API_KEY": "s3cret",
                       "HASHPLANE_CLICKHOUSE_DSN": "http://ops:hunter2@ch.example:8123",
                       "TWILIO_AUTH_TOKEN": "tok"})
    assert r.returncode == 0, r.stderr
    rows = {x["env"]: x for x in json.loads(r.stdout)}
    assert rows["HASHPLANE_SITE"] == {"name": "site", "env": "HASHPLANE_SITE",
                                      "value": "from-env", "source": "env"}
    assert rows["HASHPLANE_SMS_FROM"]["value"] == "+15550100"
    assert rows["HASHPLANE_SMS_FROM"]["source"] == f"file {env_file}:2"
    assert rows["HASHPLANE_ASIC_POLL_S"] == {"name": "asic_poll_s",
                                             "env": "HASHPLANE_ASIC_POLL_S", "value": "7.0",
                                             "source": "file .env"}
    assert rows["HASHPLANE_DATA_DIR"]["source"] == "option --data-dir"
    assert rows["HASHPLANE_DATA_DIR"]["value"] == str((tmp_path / "d").resolve())
    assert rows["HASHPLANE_METER_POLL_S"] == {"name": "meter_poll_s",
                                              "env": "HASHPLANE_METER_POLL_S",
                                              "value": "0.2", "source": "default"}
    # secrets: never printed
    assert "s3cret" not in r.stdout and "hunter2" not in r.stdout and "tok" not in \
        r.stdout.replace("token", "")
    assert rows["HASHPLANE_API_KEY"]["value"] == "(set, hidden)"
    assert rows["HASHPLANE_CLICKHOUSE_DSN"]["value"] == "http://ops:***@ch.example:8123"
    assert rows["TWILIO_AUTH_TOKEN"] == {"name": "twilio_auth_token", "env": "TWILIO_AUTH_TOKEN",
                                         "value": "(set, hidden)", "source": "env"}

    changed = hashplane("config", "--changed", cwd=tmp_path, env={"HASHPLANE_SITE": "x"})
    assert changed.returncode == 0, changed.stderr
    lines = changed.stdout.splitlines()
    assert [x.split()[0] for x in lines] == ["HASHPLANE_SITE", "HASHPLANE_ASIC_POLL_S"]
    assert lines[0].split()[1:] == ["x", "env"]


def test_replay_refuses_the_live_topics_without_live() -> None:
    r = hashplane("replay", "--from", "-15m")
    line = one_line_error(r)
    assert r.returncode == 2
    assert "refusing to re-publish into the live topics" in line and "--live" in line
    assert "--prefix" in line


def test_backtest_names_a_setting_it_does_not_know_or_a_value_it_refuses() -> None:
    r = hashplane("backtest", "--from", "-1h", "--set", "price_magin=3")
    assert r.returncode == 2 and "--set price_magin: no such setting" in one_line_error(r)
    r = hashplane("backtest", "--from", "-1h", "--set", "price=3")  # ambiguous prefix
    assert "did you mean price_margin_per_mwh, price_hysteresis_per_mwh" in one_line_error(r)
    r = hashplane("backtest", "--from", "-1h", "--set", "price_hold_s=-5")
    line = one_line_error(r)
    assert "--set price_hold_s='-5'" in line and "greater than or equal to 0" in line
    r = hashplane("backtest", "--from", "-1h", "--set", "price_margin")
    assert "want KEY=VALUE" in one_line_error(r)


def test_a_wrong_dsn_is_one_line_naming_the_store_without_its_password() -> None:
    port = closed_port()
    r = hashplane("rebuild", "--from", "-1h", env={
        "HASHPLANE_CLICKHOUSE_DSN": f"http://ops:hunter2@127.0.0.1:{port}"})
    line = one_line_error(r)
    assert line == (f"hashplane rebuild: cannot reach ClickHouse at http://ops:***@127.0.0.1:"
                    f"{port} (HASHPLANE_CLICKHOUSE_DSN): connection refused")
    r = hashplane("migrate", env={"HASHPLANE_CLICKHOUSE_DSN": "http://nohost.invalid:8123"})
    assert one_line_error(r) == ("hashplane migrate: cannot reach ClickHouse at "
                                 "http://nohost.invalid:8123 (HASHPLANE_CLICKHOUSE_DSN): "
                                 "cannot resolve host 'nohost.invalid'")


def test_an_unreachable_broker_is_one_line_naming_it() -> None:
    port = closed_port()
    r = hashplane("topics", "--create", env={"HASHPLANE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
    assert one_line_error(r) == (f"hashplane topics: cannot reach the Kafka broker at "
                                 f"127.0.0.1:{port} (HASHPLANE_KAFKA_BOOTSTRAP): no broker "
                                 "answered")


def test_a_bad_setting_is_one_line_naming_the_variable_and_the_value() -> None:
    r = hashplane("migrate", env={"HASHPLANE_API_PORT": "eighty"})
    line = one_line_error(r)
    assert line.startswith("hashplane migrate: bad setting HASHPLANE_API_PORT: ")
    assert line.endswith("(got 'eighty')")
    r = hashplane("config", env={"HASHPLANE_SMS_TIMEZONE": "Mars/Olympus"})
    assert "HASHPLANE_SMS_TIMEZONE: " in one_line_error(r)


def test_a_bad_inventory_is_one_line_naming_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "site.toml"
    bad.write_text('site = "s"\n[[asics]]\nid = "a-1"\n[[asics]]\nid = "a-2"\nhost = 7\n')
    r = hashplane("up", "--site", str(bad), "--duration", "1")
    line = one_line_error(r)
    assert line.startswith(f"hashplane: bad inventory {bad}: asics[0].host: ")
    assert line.endswith(f"(and 1 more: hashplane site check {bad})")


def test_bad_times_are_one_line() -> None:
    r = hashplane("rebuild", "--from", "yesterday-ish")
    assert "Invalid isoformat string" in one_line_error(r)


# -- progress ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_prints_periodic_lines_with_rate_and_eta_off_a_terminal() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress("rebuild", 1000, stream=out, tty=False, every_s=5.0, clock=clock)
    clock.t += 1.0
    bar.set(100)  # within 5 s of the start: nothing yet
    assert out.getvalue() == ""
    clock.t += 4.0
    bar.set(250)
    assert out.getvalue() == "rebuild: 250/1,000 events (25%), 50 events/s, ETA 0:15\n"
    clock.t += 15.0
    bar.set(1000)
    bar.close()
    bar.close()
    assert out.getvalue().splitlines()[1:] == [
        "rebuild: 1,000/1,000 events (100%), 50 events/s, ETA 0:00",
        "rebuild: 1,000 events in 0:20 (50 events/s)"]


def test_progress_draws_a_bar_in_place_on_a_terminal() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress("replay", 200, unit="records", stream=out, tty=True, clock=clock)
    clock.t += 2.0
    bar.set(50, note="x")
    assert out.getvalue() == ("\r\x1b[2Kreplay [######..................] 50/200 records (25%), "
                              "25 records/s, ETA 0:06; x")
    clock.t += 3600.0
    bar.close()
    assert out.getvalue().endswith("\r\x1b[2Kreplay: 50 records in 1:00:02 (0 records/s); x\n")


def test_progress_without_a_total_counts_and_times() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress("discover", stream=out, tty=False, every_s=1.0, clock=clock, unit="addresses")
    clock.t += 2.0
    bar.advance(10)
    assert out.getvalue() == "discover: 10 addresses, 5 addresses/s, 0:02 so far\n"
