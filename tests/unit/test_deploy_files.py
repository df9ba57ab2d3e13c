"""The deployment files in infra/ name only what exists.

* every systemd unit's ``ExecStart`` is a hashplane command line the CLI accepts, with the
  hardening and restart policy the units promise, and ``systemd-analyze verify`` finds
  nothing to say about the units;
* the compose file is valid against the Compose Specification's JSON Schema (the copy
  check-jsonschema vendors: no network), and every hashplane service runs one image with a
  command the CLI accepts and a systemd unit also runs;
* the cluster DDL (``hashplane ddl --cluster``) goes through the ClickHouse engine's parser.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams.cli import CONNECTORS, build_parser
from streams.history import ddl_script

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "infra/systemd").glob("*.service"))
BIN = "/opt/hashplane/.venv/bin/hashplane"
INSTANCES = {"hashplane-connect@.service": [c for c in CONNECTORS if c != "synthetic"],
             "hashplane-worker@.service": ["1", "2"]}


def unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def accepts(argv: list[str]) -> None:
    """The CLI parses ``argv`` (argparse exits on an unknown command or option)."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"hashplane does not accept {shlex.join(argv)}") from exc


def unit_commands() -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for path in UNITS:
        line = unit(path)["Service"]["ExecStart"]
        argv = shlex.split(line)
        assert argv[0] == BIN, f"{path.name}: runs {argv[0]}, not the installed hashplane"
        out[path.name] = [[a.replace("%i", i) for a in argv[1:]]
                          for i in INSTANCES.get(path.name, [""])]
    return out


def test_units_run_commands_the_cli_accepts() -> None:
    assert {u.name for u in UNITS} >= {
        "hashplane-broker.service", "hashplane-up.service", "hashplane-worker@.service",
        "hashplane-sink.service", "hashplane-api.service", "hashplane-connect@.service",
        "hashplane-migrate.service"}
    for commands in unit_commands().values():
        for argv in commands:
            accepts(argv)
    assert "--no-worker" in unit_commands()["hashplane-up.service"][0]


def test_units_are_hardened_restarted_and_ordered() -> None:
    for path in UNITS:
        u = unit(path)
        svc = u["Service"]
        assert svc["User"] == "hashplane" and svc["EnvironmentFile"] == \
            "/etc/hashplane/hashplane.env", path.name
        for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                          ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
                          ("StandardOutput", "journal")):
            assert svc.get(key) == want, f"{path.name}: {key}"
        assert "network-online.target" in u["Unit"]["After"], path.name
        if svc.get("Type") == "oneshot":
            assert path.name == "hashplane-migrate.service"
        else:
            assert svc["Restart"] == "always" and float(svc["RestartSec"]) > 0, path.name
    for name in ("hashplane-sink.service", "hashplane-api.service"):
        assert "hashplane-migrate.service" in unit(ROOT / "infra/systemd" / name)["Unit"][
            "Requires"]
    assert "hashplane" in (ROOT / "infra/systemd/hashplane.sysusers").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    hashplane = shutil.which("hashplane") or str(ROOT / ".venv/bin/hashplane")
    names = []
    for path in UNITS:
        text = path.read_text().replace(BIN, hashplane)  # an executable that exists here
        for i in INSTANCES.get(path.name, [""])[:1]:
            name = path.name.replace("@.", f"@{i}.") if i else path.name
            (tmp_path / name).write_text(text)
            names.append(str(tmp_path / name))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *names],
                         capture_output=True, text=True, timeout=60)
    said = [line for line in (out.stdout + out.stderr).splitlines()
            if "hashplane" in line and "User" not in line]  # the user exists on the box only
    assert out.returncode == 0 and not said, out.stdout + out.stderr


def compose() -> dict[str, object]:
    return yaml.safe_load((ROOT / "infra/compose.yaml").read_text())  # type: ignore[no-any-return]


def test_compose_file_follows_the_compose_specification() -> None:
    import jsonschema

    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations
    schema_path = (Path(spec.submodule_search_locations[0])
                   / "builtin_schemas/vendor/compose-spec.json")
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    doc = compose()
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    # the schema is not a formality: a wrong key is caught
    broken = json.loads(json.dumps(doc))
    broken["services"]["api"]["comand"] = ["api"]
    assert list(validator.iter_errors(broken))


def test_compose_services_run_the_units_commands() -> None:
    services: dict[str, dict[str, object]] = compose()["services"]  # type: ignore[assignment]
    assert {"kafka", "clickhouse", "mosquitto", "prometheus", "alertmanager",
            "grafana"} <= set(services)
    ours = {n: s for n, s in services.items() if s.get("image") == "hashplane:latest"}
    by_units = {tuple(a[:2]) if a[0] == "connect" else (a[0],)
                for cmds in unit_commands().values() for a in cmds}
    assert {"worker", "sink", "api", "migrate", "asic", "asic-actuator"} <= set(ours)
    for name, s in ours.items():
        argv = [str(a) for a in s["command"]]  # type: ignore[attr-defined]
        accepts(argv)
        key = tuple(argv[:2]) if argv[0] == "connect" else (argv[0],)
        assert key in by_units or argv[0] == "topics", f"{name}: no unit runs {argv}"
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # type: ignore[index]


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if (s.strip() and not s.strip().startswith(
        "--")) or "CREATE" in s]


def test_cluster_ddl_goes_through_the_clickhouse_parser() -> None:
    import chdb

    def literal(q: str) -> str:
        return "'" + q.replace("\\", "\\\\").replace("'", "\\'") + "'"

    script = ddl_script("hashplane", cluster="farm")
    stmts = [s.strip() for s in script.split(";\n") if "CREATE" in s]
    assert len(stmts) > 20
    for stmt in stmts:
        body = "\n".join(line for line in stmt.splitlines() if not line.startswith("--"))
        assert "ON CLUSTER farm" in body
        chdb.query(f"SELECT formatQuery({literal(body)})")  # raises on a syntax error
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/hashplane/events'" in script
    assert ("hashplane.events ON CLUSTER farm AS hashplane.events_local ENGINE = "
            "Distributed(farm, hashplane, events_local, cityHash64(site, device_id))") in script
    assert "TO hashplane.asic_telemetry_local" in script and "FROM hashplane.events_local" in script
    # migration 4: each shard's inbox writes its own local log and typed table
    assert ("hashplane.shares_in_local ON CLUSTER farm AS hashplane.events_local ENGINE = Null"
            in script)
    assert ("hashplane.shares_in ON CLUSTER farm AS hashplane.shares_in_local ENGINE = "
            "Distributed(farm, hashplane, shares_in_local, cityHash64(site, device_id))") in script
    assert ("TO hashplane.events_local AS SELECT event_id, topic, kind, schema_version, site, "
            "device_id, ts, ingested_at, source, payload, kafka_partition, kafka_offset FROM "
            "hashplane.shares_in_local") in script
    assert "TO hashplane.shares_local AS SELECT" in script and \
        "FROM hashplane.shares_in_local WHERE topic = 'shares'" in script
    with pytest.raises(RuntimeError, match="Syntax error"):
        chdb.query(f"SELECT formatQuery({literal('CREATE TABLE x ON CLUSTR farm (a UInt8)')})")


def test_alert_rules_and_alertmanager_routes_fit_together() -> None:
    """promtool and amtool are not installable here: the files are checked by a parser
    (that every metric a rule names is exposed is tests/unit/test_api_pieces.py's)."""
    from agents import alerts as agent_alerts
    from api.app import create_api
    from schemas.settings import Settings

    rules = yaml.safe_load((ROOT / "infra/prometheus/hashplane-rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"HashplaneDemandResponseBand", "HashplaneNoHeadroom", "HashplaneAsicsOffline",
            "HashplaneUplinkDown", "HashplaneSinkLagging", "HashplaneDeadLetters",
            "HashplaneCommandFailures"} <= names
    agent_source = Path(agent_alerts.__file__).read_text()
    for g in rules["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("info", "warning", "critical"), r["alert"]
            assert "summary" in r["annotations"], r["alert"]
            if key := r["labels"].get("dedup_key"):  # the agent's key for the same condition
                agent_rule = key.split("/")[0]
                assert f'"{agent_rule}", f"{agent_rule}/{{e.site}}"' in agent_source or \
                    f'f"{agent_rule}/{{e.site}}"' in agent_source, key
                assert key.endswith("{{ $labels.site }}")
    am = yaml.safe_load((ROOT / "infra/alertmanager/alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in am["receivers"]}

    def routed(route: dict[str, object]) -> set[str]:
        out = {str(route["receiver"])}
        for child in route.get("routes", []):  # type: ignore[attr-defined]
            out |= routed(child)
        return out

    assert routed(am["route"]) <= set(receivers)
    criticals = [r for r in am["route"]["routes"] if r["matchers"] == ['severity="critical"']]
    assert {r["receiver"] for r in criticals} == {"hashplane", "farm-webhook"}
    hook = receivers["hashplane"]["webhook_configs"][0]
    assert hook["send_resolved"] is True and hook["http_config"]["authorization"]
    path = "/" + hook["url"].split("/", 3)[3]
    app = create_api(Settings(api_key="k"), store=None)  # type: ignore[arg-type]
    assert "post" in app.openapi()["paths"][path]
    scrape = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    assert scrape["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"]


def test_the_environment_example_is_a_valid_configuration(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from schemas.settings import Settings

    for line in (ROOT / "infra/hashplane.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key.startswith("HASHPLANE_"), key
            monkeypatch.setenv(key, value)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.sms_severities == ["critical"] and s.sms_quiet_hours == "22:00-06:00"
    assert s.local_pool_bind == "0.0.0.0" and s.kafka_bootstrap.count(",") == 2


def test_every_command_and_option_has_help_in_words() -> None:
    import argparse

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                helped = {c.dest for c in a._choices_actions if c.help}
                missing += [f"{path} {n}" for n in a.choices if n not in helped]
                for name, sp in a.choices.items():
                    missing += walk(sp, f"{path} {name}")
            elif a.dest != "help" and not (a.help and len(a.help.split()) >= 2):
                missing.append(f"{path} {'/'.join(a.option_strings) or a.dest}")
        return missing

    parser = build_parser()
    assert walk(parser, "hashplane") == []
    assert "control plane" in (parser.description or "") and "common tasks" in (
        parser.epilog or "")
