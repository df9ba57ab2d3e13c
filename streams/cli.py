"""``hashplane``: the command line. Every subcommand is a thin entry point (no I/O at import)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.settings import Settings
from schemas.site import REGISTER_MAPS
from streams.supervise import run

if TYPE_CHECKING:  # imported where used: the CLI starts fast
    from connectors.base import ConnectorStats
    from streams.publish import Publisher

SIM_POOL_DIFFICULTY = 2.0**-24  # ~256 double SHA-256 per share for a simulated miner

#: Commands that run to an end: a library's log lines would only repeat their one-line error.
ONE_SHOT = frozenset({"topics", "migrate", "replay", "rebuild", "backtest", "tuner",
                      "config", "schemas", "ddl"})

#: The variables ``--env-file`` set, and where (``hashplane config`` names the file).
ENV_FILE_KEYS: dict[str, str] = {}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a command's options set (they win over the environment)."""
    out: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        out["data_dir"] = Path(args.data_dir)
    if getattr(args, "api_port", None) is not None:
        out["api_port"] = args.api_port
    return out


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {k: v for k, v in extra.items() if v is not None} | _options(args)
    return Settings(**overrides)


def cmd_config(args: argparse.Namespace) -> int:
    from streams.effective import effective

    s = _settings(args)
    flags = {"data_dir": "--data-dir", "api_port": "--api-port"}
    rows = effective(s, options={k: flags[k] for k in _options(args)},
                     env_file_keys=ENV_FILE_KEYS)
    if args.json:
        print(json.dumps([{"name": r.name, "env": r.env, "value": r.value,
                           "source": r.source} for r in rows], indent=2))
        return 0
    if args.changed:
        rows = [r for r in rows if r.source not in ("default", "-")]
    width = max(len(r.env) for r in rows) if rows else 0
    for r in rows:
        value = r.value if len(r.value) <= 60 else r.value[:57] + "..."
        print(f"{r.env:{width}}  {value:60}  {r.source}")
    return 0


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("aiokafka", "faust", "mode", "kafka", "clickhouse_connect", "amqtt",
                  "transitions", "pymodbus", "uvicorn", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def cmd_topics(args: argparse.Namespace) -> int:
    from schemas.registry import TOPICS

    if args.create:
        from streams.topics import ensure_topics

        created = asyncio.run(ensure_topics(_settings(args).kafka_bootstrap))
        print(f"created {len(created)} topics: {', '.join(created) or '-'}", file=sys.stderr)
    if args.json:
        print(json.dumps([t.as_dict() for t in TOPICS], indent=2))
    else:
        for t in TOPICS:
            print(f"{t.name:17} key={t.key:10} schema={t.schema:22} partitions={t.partitions:<2}"
                  f" retention={t.retention_ms // 3_600_000:>3}h  {t.description}")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.export import export_json_schemas

    paths = export_json_schemas(Path(args.dir))
    print(f"wrote {len(paths)} files to {args.dir}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from streams.history import HistoryStore

    s = _settings(args)
    store = HistoryStore(s.history_dsn, s.clickhouse_database).open()
    try:
        ran = store.migrate()
    finally:
        store.close()
    print(f"{s.history_dsn}: applied {ran or 'nothing (up to date)'}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from streams.doctor import run_doctor

    if args.data_dir:
        os.environ["HASHPLANE_DATA_DIR"] = args.data_dir
    return run_doctor(args.site)


def cmd_ddl(args: argparse.Namespace) -> int:
    from streams.history import ddl_script

    print(ddl_script(args.database, args.cluster or ""), end="")
    return 0


def _own_info_handler(s: Settings) -> logging.Handler:
    """Faust's INFO is noise at the default level, hashplane's is not (which partitions
    this worker holds): this handler passes hashplane's records below WARNING, which
    Faust's own handler (at WARNING then) drops; warnings and errors stay Faust's to print."""
    for name in ("streams", "hashplane"):
        logging.getLogger(name).setLevel(s.log_level.upper())
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(lambda r: r.levelno < logging.WARNING
                      and r.name.split(".")[0] in ("streams", "hashplane"))
    return handler


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from streams.restore import RecoveryGuard, broker_cluster_id, prepare_changelogs
    from streams.topics import ensure_topics_retrying
    from streams.worker import build_app

    s = _settings(args)
    _logging(s.log_level)

    async def prepare() -> tuple[str | None, str]:
        # Started during a broker outage, it waits for the broker; the site agents' internal
        # feed (and the contract topics) exist before Faust subscribes; empty changelogs
        # (the broker lost them) are filled from the history first.  The cluster id comes
        # first: a broker that restarts from here on is one the watchdog must see as new.
        await ensure_topics_retrying(s.kafka_bootstrap, s.topic_replication)
        cluster = await broker_cluster_id(s.kafka_bootstrap)
        return cluster, await prepare_changelogs(s, args.lane)

    who = "worker" if args.lane == "all" else f"worker-{args.lane}"
    cluster, done = asyncio.run(prepare())
    logging.getLogger("hashplane.worker").warning("%s: %s", who, done)
    app = build_app(s, lane=args.lane, cluster_id=cluster)
    RecoveryGuard(app, s, s.restore_timeout_s, who).start()
    level = "warning" if s.log_level.upper() == "INFO" else s.log_level.lower()
    app.conf.loghandlers = [*app.conf.loghandlers, _own_info_handler(s)]
    worker = faust.Worker(app, loglevel=level, quiet=True, logfile=None,
                          redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from streams.history import HistoryStore, open_retrying
    from streams.sink import HistorySink

    s = _settings(args)
    _logging(s.log_level)

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        store = HistoryStore(s.history_dsn, s.clickhouse_database)
        if not await open_retrying(store, stop):
            return
        try:
            await HistorySink(s, store).run(stop)
        finally:
            store.close()

    asyncio.run(main())
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_api
    from streams.history import HistoryStore

    s = _settings(args)
    if not s.api_key and not s.api_keys:
        print("hashplane api: no API key configured (HASHPLANE_API_KEY or HASHPLANE_API_KEYS);"
              " every request but /healthz would be refused", file=sys.stderr)
        return 2
    store = HistoryStore(s.history_dsn, s.clickhouse_database).open()
    store.migrate()
    uvicorn.run(create_api(s, store), host=s.api_host, port=s.api_port, log_level="info")
    return 0


def _when(text: str) -> datetime:
    """An ISO-8601 time (UTC when no zone is given), or 'now', or '-15m' / '-2h' / '-1d'."""
    from datetime import UTC, timedelta

    now = datetime.now(UTC)
    if text == "now":
        return now
    if text.startswith("-") and text[-1] in "smhd":
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
        return now - timedelta(seconds=float(text[1:-1]) * unit)
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _csv(text: str | None) -> list[str] | None:
    return [x for x in text.split(",") if x] if text else None


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.history import HistoryStore
    from streams.progress import Progress
    from streams.replay import replay

    s = _settings(args)
    speed = None if args.speed == "max" else float(args.speed)
    if speed is not None and speed <= 0:
        print("hashplane replay: --speed must be > 0 or 'max'", file=sys.stderr)
        return 2
    if not args.prefix and not args.live:
        print("hashplane replay: refusing to re-publish into the live topics, where the "
              "agents would act on these events again: give --prefix P to replay into copies "
              "(P<topic>), or --live to mean it", file=sys.stderr)
        return 2
    if not args.prefix:
        print("hashplane replay: --live: re-publishing to the ORIGINAL topics",
              file=sys.stderr)
    store = HistoryStore(s.history_dsn, s.clickhouse_database).open()
    try:
        with Progress("replay", unit="records") as bar:
            n = asyncio.run(replay(store, s.kafka_bootstrap, _when(args.since),
                                   _when(args.until), topics=_csv(args.topics),
                                   devices=_csv(args.devices), speed=speed,
                                   prefix=args.prefix, progress=bar))
    finally:
        store.close()
    print(f"replayed {n} records to {args.prefix or '(original)'}*")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from streams.history import HistoryStore
    from streams.progress import Progress
    from streams.replay import rebuild

    s = _settings(args)
    store = HistoryStore(s.history_dsn, s.clickhouse_database).open()
    try:
        with Progress("rebuild", unit="events") as bar:
            fold = rebuild(store, s, _when(args.since), _when(args.until),
                           devices=_csv(args.devices), progress=bar)
    finally:
        store.close()
    print(json.dumps(fold.tables(), indent=2, sort_keys=True))
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from streams import backtest
    from streams.history import HistoryStore
    from streams.progress import Progress

    s = _settings(args)
    try:
        changed_settings, changed = backtest.overrides(args.set or [], s)
    except backtest.SettingError as exc:
        print(f"hashplane backtest: {exc}", file=sys.stderr)
        return 2
    since, until = _when(args.since), _when(args.until)
    store = HistoryStore(s.history_dsn, s.clickhouse_database).open()
    try:
        with Progress("backtest", unit="events") as bar:
            report = backtest.run(store, s, changed_settings, since, until, changed,
                                  progress=bar)
    finally:
        store.close()
    if args.json:
        a, b = report.actual, report.backtest
        print(json.dumps({
            "since": since.isoformat(), "until": until.isoformat(), "events": report.events,
            "changed": {k: str(v) for k, v in changed.items()},
            **{name: {"sleeps": o.sleeps, "price_sleeps": o.price_sleeps, "wakes": o.wakes,
                      "asic_hours_asleep": o.asleep_s / 3600,
                      "energy_kwh": o.money.energy_kwh, "revenue": o.money.revenue,
                      "power_cost": o.money.power_cost, "profit": o.money.profit,
                      "currency": o.currency, "curtailed": sorted(o.curtailed)}
               for name, o in (("actual", a), ("backtest", b))}}, indent=2))
    else:
        print("\n".join(report.lines()))
    return 0


def cmd_tuner(args: argparse.Namespace) -> int:
    from agents import tuner_training as tt
    from streams.history import HistoryStore
    from streams.queries import tuning_trials

    s = _settings(args)
    out_dir = Path(args.dir) if args.dir else s.data_dir / "tuner"
    store = HistoryStore(s.history_dsn, s.clickhouse_database).open()
    try:
        since, until = _when(args.since), _when(args.until)
        if args.action == "train":
            from streams.progress import Progress

            try:
                with Progress("tuner train", unit="models") as bar:
                    ck = tt.train(tt.observations(tuning_trials(store, since, until)), since,
                                  until, out_dir, progress=lambda done, total, family:
                                  bar.set(done, total, note=f"fitted {family}"))
            except ValueError as exc:
                print(f"hashplane tuner train: {exc}", file=sys.stderr)
                return 1
            print(f"wrote {ck.path} (version {ck.version}): "
                  + ", ".join(f"{f} {n} trials" for f, n in ck.trained_on["trials"].items()))
            return 0
        paths = [Path(p) for p in args.checkpoints] or sorted(out_dir.glob("tuner-v*.pt"))
        if not paths:
            print(f"hashplane tuner evaluate: no checkpoints in {out_dir}", file=sys.stderr)
            return 1
        data = tt.observations(tuning_trials(store, since, until))
    finally:
        store.close()
    if not data:
        print("hashplane tuner evaluate: no tuning trials in that range", file=sys.stderr)
        return 1
    print(f"{'checkpoint':16} {'family':9} {'trials':>6} {'RMSE J':>8} {'spearman':>8} "
          f"{'pick regret':>11}")
    for path in paths:
        try:
            ck = tt.load_checkpoint(path)
        except ValueError as exc:
            print(f"hashplane tuner evaluate: {exc}", file=sys.stderr)
            return 1
        for e in tt.evaluate(ck, data, s.reward_temp_max_c, s.tuner_reject_max_pct):
            print(f"{path.name:16} {e.family:9} {e.trials:>6} {e.rmse_objective:>8.2f} "
                  f"{e.spearman:>8.3f} {e.pick_regret:>11.3%}")
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.broker import BrokerError, EmbeddedBroker
    from streams.topics import ensure_topics

    s = _settings(args)
    _logging(s.log_level)
    log = logging.getLogger("hashplane.broker")

    async def main() -> int:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        broker = EmbeddedBroker(args.port, host=args.host, log_file=s.data_dir / "broker.log")
        try:
            await broker.start()
            await ensure_topics(broker.bootstrap)
        except BrokerError as exc:
            print(f"hashplane broker: {exc}", file=sys.stderr)
            await broker.stop()
            return 1
        print(f"tansu broker ready: HASHPLANE_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
        delay = 0.5
        try:
            # The supervisor of the broker process: it comes back, empty, on the same port
            # (producers retry meanwhile; the sink and the worker recover from ClickHouse).
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
                if stop.is_set() or broker.running():
                    continue
                log.error("tansu broker exited; restarting it on %s (memory storage: it "
                          "comes back empty)", broker.bootstrap)
                try:
                    await broker.restart()
                    await ensure_topics(broker.bootstrap)
                    delay = 0.5
                    print(f"tansu broker restarted: {broker.bootstrap}", flush=True)
                except (BrokerError, OSError) as exc:
                    log.error("restart failed: %s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(30.0, delay * 2)
        finally:
            await broker.stop()
        return 0

    return asyncio.run(main())


CONNECTORS = ("asic", "asic-actuator", "local-pool", "meter", "power", "rigs", "gpu",
              "gpu-actuator", "models", "coordinator", "uplink", "price", "alerts", "synthetic")


def cmd_connect(args: argparse.Namespace) -> int:
    from connectors.synthetic import run_synthetic
    from streams.publish import Publisher

    s = _settings(args)
    _logging(s.log_level)
    names = [n for n in args.name.split(",") if n]
    for name in names or [args.name]:
        if name not in CONNECTORS:
            print(f"unknown connector {name!r}; available: {', '.join(CONNECTORS)}",
                  file=sys.stderr)
            return 2
    if "synthetic" in names and len(names) > 1:
        print("hashplane connect: synthetic runs alone", file=sys.stderr)
        return 2
    if set(names) - {"synthetic", "alerts"} and not args.site:
        print(f"hashplane connect {args.name} needs --site FILE (the site inventory: "
              "infra/site.example.toml; `hashplane sim --site-file` writes one)",
              file=sys.stderr)
        return 2
    from schemas.site import Site, SiteError, load_site

    try:
        devices = load_site(args.site, os.environ) if args.site else Site()
    except SiteError as exc:
        print(f"hashplane connect: {exc}", file=sys.stderr)
        return 2
    shard = _shard_or_exit(args)

    async def connect(pub: Publisher, stop: asyncio.Event,
                      stats: dict[str, ConnectorStats]) -> None:
        """Run the named connectors until ``stop`` (their counters into ``stats``)."""
        async with pub:
            if names == ["synthetic"]:
                await run_synthetic(pub, stop, site=s.site, workers=args.workers,
                                    interval_s=args.interval)
            else:
                from streams.runtime import site_connectors
                from streams.supervise import Supervisor

                conns = site_connectors(s, pub, devices, frozenset(names), shard=shard,
                                        stats=stats)
                for name in names:
                    if name not in conns:
                        raise SystemExit(
                            "no alert sink configured: set HASHPLANE_SMS_TO (with "
                            "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, HASHPLANE_SMS_FROM) or "
                            "HASHPLANE_ALERT_WEBHOOKS" if name == "alerts" else
                            f"{args.site} describes no {name} devices")
                # a failure a connector did not ride out restarts it, not the process
                sup = Supervisor(stop)
                for name, conn in conns.items():
                    sup.task(name, partial(conn.run, stop))
                while not stop.is_set():
                    await sup.check()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
                await sup.shutdown()

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stats: dict[str, ConnectorStats] = {}
        pub = Publisher(s.kafka_bootstrap, client_id=f"hashplane-{'-'.join(names)}")
        try:
            await connect(pub, stop, stats)
        finally:
            logging.getLogger("hashplane.connect").info(
                "hashplane connect %s stopped: %s", args.name, _connect_summary(pub, stats))

    try:
        run(main())
    except KeyboardInterrupt:
        pass
    return 0


def _connect_summary(pub: Publisher, stats: dict[str, ConnectorStats]) -> str:
    """What a connector process read and what became of it, one line at its stop: the
    events per kind its connectors published, the dead letters, and the publisher's count of
    records the broker acknowledged, dropped from a full outbox, and left unsent."""
    kinds: dict[str, int] = {}
    for st in stats.values():
        for kind, n in st.by_kind.items():
            kinds[kind] = kinds.get(kind, 0) + n
    events = " ".join(f"{k}={n}" for k, n in sorted(kinds.items())) or "none"
    letters = sum(st.dlq for st in stats.values())
    p = pub.stats
    return (f"events {events}; dead letters {letters}; acknowledged {p.sent}; "
            f"dropped {p.dropped}; not sent {pub.unsent}; sent again {p.resent}")


def _farm_config(args: argparse.Namespace, s: Settings) -> Any:
    from sim.farm import FarmConfig

    if args.scenario and args.scenario not in _scenarios():
        raise SystemExit(f"unknown scenario {args.scenario!r}; known: {', '.join(_scenarios())}")
    return FarmConfig(site=s.site, asics=args.asics, gpu_rigs=args.gpu_rigs,
                      scenario=args.scenario, speed=args.speed, nominal_hz=args.nominal_hz,
                      data_dir=s.data_dir / "sim", asic_base_ip=args.asic_base_ip,
                      firmware_mix=_mix(args.firmware_mix), meter_map=args.meter_map)


def _mix(text: str) -> dict[str, int]:
    """``luxos=40,braiins=40`` -> {"luxos": 40, "braiins": 40}; SystemExit when malformed."""
    from sim.farm import FIRMWARE_APIS

    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, n = part.partition("=")
        if name not in FIRMWARE_APIS or not n.strip().isdigit():
            raise SystemExit(f"--firmware-mix: {part!r} is not FIRMWARE=N with FIRMWARE one "
                             f"of {', '.join(FIRMWARE_APIS)}")
        out[name] = int(n)
    if not sum(out.values()):
        raise SystemExit("--firmware-mix: no ASIC would have a firmware")
    return out


def _scenarios() -> list[str]:
    from sim.scenarios import SCENARIOS

    return list(SCENARIOS)


def cmd_sim(args: argparse.Namespace) -> int:
    from sim.farm import Farm

    s = _settings(args)
    _logging(s.log_level)
    cfg = _farm_config(args, s)

    async def main() -> None:
        import signal
        import time

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        t0 = time.monotonic()
        farm = Farm(cfg)
        await farm.start()
        if args.site_file:
            farm.write_site(Path(args.site_file))
        e = farm.endpoints()
        print(f"simulated farm up in {time.monotonic() - t0:.1f}s: {len(e['asics'])} ASICs "
              f"({e['asics'][0]['host'] if e['asics'] else '-'}..:4028), {len(e['rigs'])} rigs, "
              f"Modbus {e['modbus']['host']}:{e['modbus']['port']}, "
              f"MQTT {e['mqtt']['host']}:{e['mqtt']['port']}, "
              f"coordinator {e['coordinator']['url']}"
              + (f"; inventory in {args.site_file} (secrets: "
                 f"{Path(args.site_file).with_suffix('.env')})" if args.site_file else ""),
              flush=True)
        try:
            await asyncio.wait_for(stop.wait(), args.duration)
        except TimeoutError:
            pass
        finally:
            await farm.stop()

    run(main())
    return 0


def _site_or_exit(path: str) -> Any:
    from schemas.site import SiteError, load_site

    try:
        return load_site(path, os.environ)
    except SiteError as exc:  # one line; `hashplane site check` lists every problem
        more = f" (and {len(exc.problems) - 1} more: hashplane site check {path})" \
            if len(exc.problems) > 1 else ""
        raise SystemExit(f"hashplane: bad inventory {exc.source}: {exc.problems[0]}{more}") \
            from None


def cmd_site(args: argparse.Namespace) -> int:
    """``site check FILE``: every problem with its place, or one line per device kind;
    ``site discover CIDR...``: the miners on the networks, as inventory entries."""
    from schemas.site import SiteError, load_site

    if args.action == "discover":
        return _discover(args)
    if len(args.targets) != 1:
        print("hashplane site check FILE: one inventory file", file=sys.stderr)
        return 2
    args.file = args.targets[0]
    if args.action == "check":
        try:
            site = load_site(args.file, os.environ)
        except SiteError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"{args.file}: site {site.site} is valid")
        for line in site.summary():
            print(f"  {line}")
        return 0
    return 2


def _discover(args: argparse.Namespace) -> int:
    from connectors.discovery import scan
    from schemas.site import merge_asics
    from streams.progress import Progress

    bar = Progress("discover", unit="addresses")

    def progress(p: Any) -> None:
        bar.set(p.scanned, p.total, note=", ".join(
            f"{k} {v}" for k, v in sorted(p.found.items())) or "no miners yet")

    t0 = time.monotonic()
    try:
        with bar:
            found = run(scan(args.targets, port=args.port, concurrency=args.concurrency,
                             timeout_s=args.timeout, progress=progress, every_s=0.1))
    except ValueError as exc:
        print(f"hashplane site discover: {exc}", file=sys.stderr)
        return 2
    known = [f for f in found if f.firmware != "unknown"]
    for f in found:
        if f.firmware == "unknown":
            print(f"  {f.host}:{f.port} answers the CGMiner API but names no firmware "
                  "hashplane knows: not added", file=sys.stderr)
    entries = [{"host": f.host, "port": f.port, "firmware": f.firmware, "model": f.model}
               for f in known]
    target = Path(args.merge) if args.merge else None
    before = target.read_text() if target is not None and target.exists() else ""
    text, added, kept = merge_asics(before, entries)
    if target is None:
        sys.stdout.write(text)
    else:
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    print(f"discovered {len(known)} miner(s) in {time.monotonic() - t0:.1f} s"
          + (f"; {target}: {added} added, {kept} already listed (kept as they are)"
             if target is not None else ""), file=sys.stderr)
    return 0


def _shard_or_exit(args: argparse.Namespace) -> tuple[int, int]:
    from schemas.site import parse_shard

    try:
        return parse_shard(args.shard) if getattr(args, "shard", None) else (0, 1)
    except ValueError as exc:
        raise SystemExit(f"hashplane {args.command}: {exc}") from None


def _run_stack(args: argparse.Namespace, *, embedded: bool) -> int:
    from streams.runtime import Stack, StackOptions, run_stack

    with_farm = embedded and args.asics + args.gpu_rigs > 0
    # The simulated miners find their shares for real (sim/work.py), which they can only
    # do against an easy target: the demo's local pool asks for one, unless told otherwise.
    s = _settings(args, local_pool_difficulty=SIM_POOL_DIFFICULTY
                  if with_farm and "HASHPLANE_LOCAL_POOL_DIFFICULTY" not in os.environ
                  else None)
    _logging(s.log_level)
    # The simulated rigs' GPUs are the workers rig01-gpu0...; the synthetic source, which
    # uses the same names, only runs when there are no simulated rigs (or when asked).
    workers = args.workers if args.workers is not None else (0 if with_farm and args.gpu_rigs
                                                             else 16)
    opts = StackOptions(
        embedded_broker=embedded, kafka_port=getattr(args, "kafka_port", 0) or 0,
        worker=getattr(args, "worker", True),
        synthetic_workers=workers if embedded else 0, duration_s=args.duration,
        farm=_farm_config(args, s) if with_farm else None,
        endpoints_file=(Path(args.site_file) if getattr(args, "site_file", None)
                        else s.data_dir / "sim" / "site.toml") if embedded else None,
        site=_site_or_exit(args.site) if not embedded and getattr(args, "site", None)
        else None, shard=_shard_or_exit(args))
    stack = Stack(settings=s)

    async def main() -> None:
        ready = asyncio.Event()
        stop = asyncio.Event()
        runner = asyncio.create_task(run_stack(s, opts, stop=stop, ready=ready, stack=stack))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            _banner(stack, embedded)
        await runner

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - one clear line for the operator
        print(f"hashplane: {exc}", file=sys.stderr)
        return 1
    print(f"hashplane stopped; history kept in {stack.settings.history_dsn}", flush=True)
    return 0


def _banner(stack: Any, embedded: bool) -> None:
    s = stack.settings
    key = s.api_key if stack.generated_key else "$HASHPLANE_API_KEY"
    lines = [
        "",
        "hashplane is running" + (" (embedded demo)" if embedded else ""),
        f"  dashboard  {stack.api_url}/   (API docs: {stack.api_url}/docs)",
        f"  API key    {s.api_key if stack.generated_key else '(HASHPLANE_API_KEY)'}"
        + ("   generated for this run; set HASHPLANE_API_KEY to choose one"
           if stack.generated_key else ""),
        f"  health     curl {stack.api_url}/healthz",
        f"  fleet      curl -H 'Authorization: Bearer {key}' {stack.api_url}/v1/fleet",
        f"  shares     curl -H 'Authorization: Bearer {key}' "
        f"{stack.api_url}/v1/workers/rig01-gpu5/shares",
        f"  metrics    curl -H 'Authorization: Bearer {key}' {stack.api_url}/metrics",
        f"  Kafka      {s.kafka_bootstrap}",
        *([f"  farm       {_farm_line(stack.farm)}",
           f"  inventory  {stack.endpoints_file}"] if stack.farm else []),
        f"  ClickHouse {s.history_dsn} (database {s.clickhouse_database})",
        f"  logs       {s.data_dir}/worker.log"
        f"{f', {s.data_dir}/worker-control.log' if s.control_lane else ''}"
        f"{f', {s.data_dir}/control-connectors.log' if s.control_process and stack.farm else ''}"
        f", {s.data_dir}/broker.log",
        "  Ctrl-C stops everything; the history stays readable.",
        "",
    ]
    print("\n".join(lines), flush=True)


def farm_args(p: argparse.ArgumentParser) -> None:
    """Options of the simulated farm (``sim`` and ``demo``)."""
    p.add_argument("--asics", type=int, default=160, help="simulated ASICs (default 160)")
    p.add_argument("--gpu-rigs", type=int, default=4, help="simulated GPU rigs of 8 GPUs")
    p.add_argument("--scenario", default=None,
                   help="grid-dip, supply-drop, uplink-outage, gpu-overheat, reject-spike, "
                        "price-spike, asic-crash, trouble (all of them in turn)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument("--nominal-hz", type=float, default=50.0, choices=[50.0, 60.0],
                   help="the simulated grid's nominal frequency (50 or 60 Hz)")
    p.add_argument("--asic-base-ip", default="127.0.1.1", help="first ASIC's address")
    p.add_argument("--meter-map", default="ieee754-float", choices=sorted(REGISTER_MAPS),
                   help="the register map the simulated grid meter serves (default "
                        "ieee754-float; sel-735: the SEL-735's own map)")
    p.add_argument("--site-file", default=None,
                   help="write the farm as a site inventory (TOML) here, its secrets beside "
                        "it (.env)")
    p.add_argument("--firmware-mix",
                   default="luxos=1,braiins=1,antminer=1,whatsminer=1,vnish=1",
                   help="firmwares of the simulated ASICs and their shares, e.g. "
                        "luxos=40,braiins=40,antminer=40,whatsminer=40 (default: the five "
                        "in equal shares)")


def _farm_line(farm: Any) -> str:
    e = farm.endpoints()
    scen = f", scenario {farm.config.scenario}" if farm.config.scenario else ""
    return (f"{len(e['asics'])} ASICs from {e['asics'][0]['host'] if e['asics'] else '-'}:4028, "
            f"{len(e['rigs'])} GPU rigs, meter modbus://{e['modbus']['host']}:"
            f"{e['modbus']['port']}, MQTT {e['mqtt']['host']}:{e['mqtt']['port']}{scen}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the commands in the README)."""
    p = argparse.ArgumentParser(
        prog="hashplane", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="hashplane: the control plane of a mining and AI-compute farm. It reads "
                    "the ASICs, GPU rigs,\nthe grid meter, the power feeds and the power "
                    "price, curtails on grid frequency, supply\nand price, keeps the whole "
                    "history in ClickHouse and serves it to operators (API,\ndashboard, "
                    "alerts), with revenue, power cost and profit per machine.",
        epilog="common tasks:\n"
               "  hashplane demo                      try it: everything on this machine, "
               "a simulated farm\n"
               "  hashplane site discover 10.0.0.0/24 find the miners, write an inventory\n"
               "  hashplane site check site.toml      validate an inventory\n"
               "  hashplane doctor --site site.toml   check a deployment, say what is wrong\n"
               "  hashplane up --site site.toml       run a real site\n"
               "  hashplane rebuild --from -1h        the site state, folded from the history\n"
               "  hashplane backtest --from -1d --set price_margin=20\n"
               "                                      what a setting would have curtailed "
               "and earned\n"
               "  hashplane COMMAND --help            the options of a command")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--data-dir", help="data directory (HASHPLANE_DATA_DIR)")
        sp.add_argument("--env-file", default=None,
                        help="KEY=VALUE lines added to the environment first (secrets the "
                             "inventory names; systemd's EnvironmentFile format)")
        return sp

    d = common(sub.add_parser(
        "demo", help="run the whole system on this machine against a simulated farm (no "
                     "setup: broker, ClickHouse and MQTT embedded)"))
    d.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    d.add_argument("--api-port", type=int, default=None, help="API port (0 = any free)")
    d.add_argument("--kafka-port", type=int, default=0, help="embedded broker port (0 = any)")
    d.add_argument("--workers", type=int, default=None,
                   help="synthetic share workers (default 16 without simulated rigs, else 0)")
    farm_args(d)
    d.set_defaults(func=lambda a: _run_stack(a, embedded=True), data_dir_default="var/demo")

    sm = common(sub.add_parser("sim", help="run the simulated farm alone"))
    farm_args(sm)
    sm.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    sm.set_defaults(func=cmd_sim, data_dir_default="var/sim")

    u = common(sub.add_parser(
        "up", help="run a real site: the connectors and actuators of an inventory, the "
                   "history sink, the API and a worker, against the configured broker and "
                   "ClickHouse"))
    u.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    u.add_argument("--api-port", type=int, default=None,
                   help="API port (default HASHPLANE_API_PORT)")
    u.add_argument("--site", default=None,
                   help="the site inventory (TOML, infra/site.example.toml): runs every "
                        "connector and actuator it describes")
    u.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N of the inventory's ASICs and rigs (each "
                        "device in exactly one shard; site-wide devices with shard 0): N "
                        "boxes, or processes, share a large fleet")
    u.add_argument("--no-worker", dest="worker", action="store_false",
                   help="do not start a Faust worker here: run them as their own processes "
                        "(`hashplane worker`, as many as the partitions allow)")
    u.set_defaults(func=lambda a: _run_stack(a, embedded=False), workers=0, asics=0,
                   gpu_rigs=0)

    st = sub.add_parser("site", help="the site inventory: check a file, discover miners")
    st.add_argument("action", choices=["check", "discover"],
                    help="check FILE: validate it, print every problem with its place, exit "
                         "1 if there is one; discover CIDR [CIDR...]: scan the networks for "
                         "miners and print (or --merge) their inventory entries")
    st.add_argument("targets", nargs="+", metavar="FILE|CIDR",
                    help="check: the inventory file; discover: networks such as 10.0.0.0/24")
    st.add_argument("--merge", default=None, metavar="FILE",
                    help="discover: add the miners FILE does not list yet (by host and "
                         "port), keeping everything already in it")
    st.add_argument("--port", type=int, default=4028, help="discover: the RPC port (4028)")
    st.add_argument("--concurrency", type=int, default=512,
                    help="discover: addresses asked at once (512)")
    st.add_argument("--timeout", type=float, default=1.0,
                    help="discover: seconds an address has to answer (1.0)")
    st.set_defaults(func=cmd_site)

    doc = common(sub.add_parser(
        "doctor", help="check a deployment: configuration, inventory, Kafka, ClickHouse, the "
                       "API and every device class; says what is wrong in plain words"))
    doc.add_argument("--site", default=None, help="the site inventory (TOML) to check too")
    doc.set_defaults(func=cmd_doctor)
    w = common(sub.add_parser("worker", help="run the Faust agents"))
    from agents.spec import WORKER_LANES

    w.add_argument("--lane", choices=WORKER_LANES, default="all",
                   help="run every agent (all), or one lane's: the control path's agents "
                        "(energy, scheduler, the site feed's forwarder; consumer group "
                        "<app_id>-control) or the rest (main: share ratios and the other "
                        "agents).  `up` runs control and main as two processes unless "
                        "HASHPLANE_CONTROL_LANE=false")
    w.set_defaults(func=cmd_worker)
    common(sub.add_parser("sink", help="run the ClickHouse history sink")).set_defaults(
        func=cmd_sink)
    a = common(sub.add_parser("api", help="run the operator API, the dashboard and /metrics"))
    a.add_argument("--api-port", type=int, default=None,
                   help="API port (default HASHPLANE_API_PORT)")
    a.set_defaults(func=cmd_api)
    common(sub.add_parser("migrate", help="apply ClickHouse migrations")).set_defaults(
        func=cmd_migrate)

    dd = sub.add_parser("ddl", help="print the ClickHouse DDL the migrations apply")
    dd.add_argument("--database", default="hashplane", help="database name (hashplane)")
    dd.add_argument("--cluster", default=None, metavar="NAME",
                    help="a ClickHouse cluster's DDL: Replicated tables on every shard, "
                         "Distributed tables over them, ON CLUSTER NAME")
    dd.set_defaults(func=cmd_ddl)

    b = common(sub.add_parser(
        "broker", help="run the embedded Tansu broker with the contract topics, restarting it "
                       "if it dies"))
    b.add_argument("--port", type=int, default=9092, help="listen port (default 9092)")
    b.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    b.set_defaults(func=cmd_broker)

    cf = common(sub.add_parser(
        "config", help="print the settings in force and where each came from",
        description="Print every setting in force: its HASHPLANE_ variable, its value (keys "
        "and passwords hidden) and its source: an option, the environment, a file "
        "(--env-file or ./.env) or the default."))
    cf.add_argument("--json", action="store_true", help="a JSON list of the settings")
    cf.add_argument("--changed", action="store_true",
                    help="only the settings that are not at their defaults")
    cf.set_defaults(func=cmd_config)

    t = sub.add_parser("topics", help="print the topic registry")
    t.add_argument("--json", action="store_true", help="JSON list of topic specs")
    t.add_argument("--create", action="store_true", help="create missing topics on the broker")
    t.set_defaults(func=cmd_topics)

    sc = sub.add_parser("schemas", help="export the events' JSON Schemas (for other tools)")
    scs = sc.add_subparsers(dest="action", required=True)
    ex = scs.add_parser("export", help="write one JSON Schema per topic into DIR")
    ex.add_argument("dir", help="directory the schema files are written to")
    ex.set_defaults(func=cmd_schemas)

    r = common(sub.add_parser("replay", help="re-publish the event log of a time range"))
    r.add_argument("--from", dest="since", required=True,
                   help="ISO-8601 (UTC if no zone), 'now' or --from=-15m / -2h / -1d")
    r.add_argument("--to", dest="until", default="now", help="end, exclusive (default now)")
    r.add_argument("--topics", default=None, help="comma-separated (default: every topic)")
    r.add_argument("--devices", default=None, help="comma-separated device ids")
    r.add_argument("--speed", default="max", help="recorded pace x SPEED, or 'max'")
    r.add_argument("--prefix", default="", help="publish to PREFIX<topic> copies")
    r.add_argument("--live", action="store_true",
                   help="without --prefix: re-publish into the live topics, where the agents "
                        "act on the events again (refused otherwise)")
    r.set_defaults(func=cmd_replay)

    rb = common(sub.add_parser("rebuild", help="fold the event log through the agents' step "
                                               "functions and print the site state"))
    rb.add_argument("--from", dest="since", required=True, help="as for replay")
    rb.add_argument("--to", dest="until", default="now", help="end, exclusive (default now)")
    rb.add_argument("--devices", default=None, help="comma-separated device ids")
    rb.set_defaults(func=cmd_rebuild)

    bt = common(sub.add_parser(
        "backtest", help="fold stored history through the energy agent, scheduler and profit "
                         "agent with other settings; print what would have been curtailed "
                         "and earned, beside what really happened"))
    bt.add_argument("--from", dest="since", required=True, help="as for replay")
    bt.add_argument("--to", dest="until", default="now", help="end, exclusive (default now)")
    bt.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a setting changed for the back-test (repeatable): its name, its "
                         "HASHPLANE_ variable or a unique prefix, e.g. price_margin=20")
    bt.add_argument("--json", action="store_true", help="the figures as JSON")
    bt.set_defaults(func=cmd_backtest)

    tu = sub.add_parser("tuner", help="train and compare the GPU tuner's models")
    tus = tu.add_subparsers(dest="action", required=True)
    for name, text in (("train", "fit the models on the tuning trials of a time range and "
                                 "save a versioned checkpoint"),
                       ("evaluate", "compare checkpoints on the same trials")):
        a = common(tus.add_parser(name, help=text))
        a.add_argument("--from", dest="since", required=True, help="as for replay")
        a.add_argument("--to", dest="until", default="now", help="end, exclusive (default now)")
        a.add_argument("--dir", default=None, help="checkpoint directory (<data-dir>/tuner)")
        if name == "evaluate":
            a.add_argument("checkpoints", nargs="*", help="checkpoints (default: all in --dir)")
        a.set_defaults(func=cmd_tuner)

    c = common(sub.add_parser("connect", help="run one connector or actuator on its own"))
    c.add_argument("name", help=f"connector: {', '.join(CONNECTORS)}; several, comma-"
                   "separated, run in one process")
    c.add_argument("--site", default=None, help="the site inventory (TOML) naming the devices")
    c.add_argument("--shard", default=None, metavar="I/N",
                   help="only shard I of N of the inventory's devices (as for `up`)")
    c.add_argument("--workers", type=int, default=16,
                   help="synthetic: share workers to simulate (16)")
    c.add_argument("--interval", type=float, default=2.0,
                   help="synthetic: seconds between share reports (2.0)")
    c.set_defaults(func=cmd_connect)
    return p


def load_env_file(path: Path) -> None:
    """Set KEY=VALUE lines (# comments, optional quotes) in the environment, not overriding."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(f"hashplane: cannot read --env-file {path}: {exc.strerror}") from None
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip().isidentifier():
            raise SystemExit(f"hashplane: {path}:{n}: not KEY=VALUE")
        key = key.strip()
        if key not in os.environ:
            os.environ[key] = value.strip().strip('"').strip("'")
            ENV_FILE_KEYS[key.upper()] = f"{path}:{n}"


def _stop_while_starting(signum: int, _frame: Any) -> None:
    # SIGTERM before a command has set up its own shutdown (it is still importing or
    # opening the store): nothing is running yet, so leave at once, cleanly.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hashplane`` console script."""
    import signal

    signal.signal(signal.SIGTERM, _stop_while_starting)
    args = build_parser().parse_args(_times_may_start_with_dash(
        sys.argv[1:] if argv is None else argv))
    if getattr(args, "env_file", None):
        load_env_file(Path(args.env_file))
    if getattr(args, "data_dir_default", None) and not getattr(args, "data_dir", None) \
            and "HASHPLANE_DATA_DIR" not in os.environ:
        args.data_dir = args.data_dir_default
    if args.command in ONE_SHOT:  # the drivers' own retry chatter is not the message
        for name in ("aiokafka", "clickhouse_connect", "urllib3"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    else:
        long_running_gc()
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # an error a person can act on: one line; a bug: its traceback
        from pydantic import ValidationError

        from streams.effective import actionable

        if isinstance(exc, ValueError) and not isinstance(exc, ValidationError) \
                and args.command in ("replay", "rebuild", "tuner"):
            line: str | None = str(exc)  # bad times, topics, files
        else:
            try:
                s: Settings | None = _settings(args)
            except ValidationError:
                s = None
            line = actionable(exc, s)
        if line is None:
            raise
        print(f"hashplane {args.command}: {line}", file=sys.stderr)
        return 2


#: Young-generation threshold of the services' garbage collector (CPython's default: 700).
GC_GEN0_THRESHOLD = 50_000


def long_running_gc() -> None:
    """Collect garbage less often in a service: each record decoded (a pydantic model and
    its values) allocates a few containers, so at the default threshold the collector ran
    every ~100 records and took a third of the sink's decoding (16 us a record, 8 us with
    this; measured with ``bench/ingest.py --profile``).  What was imported so far is moved
    out of the collector's sight (``gc.freeze``); cycles are still collected."""
    import gc

    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _times_may_start_with_dash(argv: list[str]) -> list[str]:
    """``--from -15m`` as ``--from=-15m``: argparse takes a value that starts with '-' (and
    is not a plain number) for an option."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a in ("--from", "--to"):
            nxt = next(it, None)
            if nxt is not None and nxt.startswith("-") and len(nxt) > 1 and nxt[1].isdigit():
                out.append(f"{a}={nxt}")
                continue
            out.append(a)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
