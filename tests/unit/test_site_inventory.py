"""The site inventory (schemas/site.py): one test per class of mistake, each naming its place."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from schemas.site import Site, SiteError, dump_site, load_site, parse_site

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "infra" / "site.example.toml"
SECRETS = {"HASHPLANE_ANTMINER_PASSWORD": "a", "HASHPLANE_WHATSMINER_PASSWORD": "w",
           "HASHPLANE_MQTT_PASSWORD": "m", "HASHPLANE_COORDINATOR_KEY": "k"}


def example() -> dict:  # type: ignore[type-arg]
    return tomllib.loads(EXAMPLE.read_text())


def problems(data: dict, environ: dict[str, str] = SECRETS) -> list[str]:  # type: ignore[type-arg]
    with pytest.raises(SiteError) as info:
        parse_site(data, environ)
    return info.value.problems


def test_the_annotated_example_is_valid_and_round_trips() -> None:
    site = load_site(EXAMPLE, SECRETS)
    assert len(site.asics) == 5 and site.feeds[0].capacity_kw == 120.0
    assert site.mqtt is not None and site.mqtt.tls and site.mqtt.port == 8883
    assert site.secret(site.mqtt.password_env, SECRETS) == "m"
    again = parse_site(tomllib.loads(dump_site(site)), SECRETS)
    assert again == site


def test_a_missing_field_names_its_place() -> None:
    data = example()
    del data["asics"][3]["host"]
    assert problems(data) == ["asics[3].host: field required"]


def test_a_wrong_type_names_its_place() -> None:
    data = example()
    data["asics"][1]["port"] = "4028x"
    data["meter"]["unit"] = 300
    out = problems(data)
    assert any(p.startswith("asics[1].port: ") and "integer" in p for p in out), out
    assert any(p.startswith("meter.unit: ") and "247" in p for p in out), out


def test_a_bad_host_and_an_unknown_field_are_named() -> None:
    data = example()
    data["asics"][0]["host"] = "10.0.0.999 ; rm"
    data["asics"][2]["hots"] = "10.0.0.1"
    out = problems(data)
    assert "asics[0].host: not an IP address or a host name" in out
    assert any(p.startswith("asics[2].hots: unknown field") for p in out), out


def test_duplicate_ids_and_addresses_name_both_places() -> None:
    data = example()
    data["asics"][4]["id"] = data["asics"][0]["id"]
    data["asics"][3]["host"] = data["asics"][2]["host"]
    out = problems(data)
    assert "asics[4].id: duplicate 'a-r01-01' (first at asics[0])" in out
    assert "asics[3].host: duplicate '10.10.2.11:4028' (first at asics[2])" in out


def test_an_unknown_dialect_lists_the_known_ones() -> None:
    data = example()
    data["asics"][1]["firmware"] = "hiveos"
    (p,) = problems(data)
    assert p.startswith("asics[1].firmware: ") and "'braiins'" in p and "'whatsminer'" in p


def test_an_undefined_secret_names_the_variable_and_its_place() -> None:
    env = {k: v for k, v in SECRETS.items() if k != "HASHPLANE_MQTT_PASSWORD"}
    out = problems(example(), env)
    assert out == ["mqtt.password_env: environment variable HASHPLANE_MQTT_PASSWORD is not set"]


def test_dangling_references_are_named() -> None:
    data = example()
    data["asics"][0]["feed"] = "feed-z"
    data["asics"][1]["credentials"] = "nobody"
    data["meter"]["register_map"] = "sel-9999"
    out = problems(data)
    assert "asics[0].feed: no feed 'feed-z' in [[feeds]]" in out
    assert "asics[1].credentials: no [credentials.nobody] table" in out
    assert any(p.startswith("meter.register_map: unknown map 'sel-9999'") for p in out), out


def test_an_inline_register_map_is_checked_and_used() -> None:
    data = example()
    data["meter"]["register_map"] = {"fields": {"frequency_hz": {"address": 0,
                                                                 "type": "uint16"}}}
    (p,) = problems(data)
    assert p.startswith("meter.register_map: ") and "active_power_kw" in p
    data["meter"]["register_map"]["fields"] |= {
        "voltage_v": {"address": 1, "type": "uint16", "scale": 0.1},
        "active_power_kw": {"address": 2, "type": "int32"}}
    site = parse_site(data, SECRETS)
    assert site.meter is not None and site.meter.registers().fields["voltage_v"].scale == 0.1


def test_a_toml_syntax_error_says_where(tmp_path: Path) -> None:
    f = tmp_path / "site.toml"
    f.write_text('site = "s"\nasics = [\n  {id = "a", host = }\n]\n')
    with pytest.raises(SiteError) as info:
        load_site(f, {})
    assert "TOML syntax" in info.value.problems[0] and "line 3" in info.value.problems[0]


def test_site_check_exits_non_zero_with_every_problem_and_zero_with_a_summary(
        tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('asics = [{id = "a"}, {id = "a", host = "10.0.0.1", firmware = "x"}]\n')
    r = subprocess.run([sys.executable, "-m", "streams.cli", "site", "check", str(bad)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert "asics[0].host: field required" in r.stderr and "asics[1].firmware" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text(dump_site(Site.model_validate({"asics": [
        {"id": "a", "host": "10.0.0.1", "firmware": "braiins"}]})))
    r = subprocess.run([sys.executable, "-m", "streams.cli", "site", "check", str(good)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "asics           1 (braiins 1)" in r.stdout
