"""Prometheus exposition of the fleet and the pipeline (``GET /metrics``).

Everything is read at scrape time from the live view (api/live.py), the in-process
connectors' and sink's counters when they run in this process (the demo, ``hashplane up``),
so a scrape never queries ClickHouse or Kafka.  Names follow Prometheus conventions
(``_total`` counters, base units: seconds, watts, hertz).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from api.live import LATENCY_BUCKETS, LiveFeed

StatsSource = Callable[[], dict[str, Any]]


class HashplaneCollector(Collector):
    """Collects from a LiveFeed and optional in-process counters at scrape time."""

    def __init__(self, live: LiveFeed, site: str, connectors: StatsSource | None = None,
                 sink: Callable[[], Any] | None = None,
                 outbox: Callable[[], Any] | None = None):
        self.live, self.site = live, site
        self.connectors, self.sink, self.outbox = connectors, sink, outbox

    def collect(self) -> Iterator[Metric]:
        yield from self._pipeline()
        yield from self._fleet()
        yield from self._in_process()

    def _pipeline(self) -> Iterator[Metric]:
        p = self.live.pipeline
        ev = CounterMetricFamily("hashplane_events", "Events seen on each topic since start",
                                 labels=["topic"])
        for topic, n in sorted(p.events.items()):
            ev.add_metric([topic], n)
        yield ev
        dlq = CounterMetricFamily("hashplane_dlq_events", "Records dead-lettered, by the "
                                  "topic they came from", labels=["source_topic"])
        for topic, n in sorted(p.dlq.items()):
            dlq.add_metric([topic], n)
        yield dlq
        acks = CounterMetricFamily("hashplane_command_acks", "Command outcomes",
                                   labels=["command_kind", "status"])
        for (kind, status), n in sorted(p.acks.items()):
            acks.add_metric([kind, status], n)
        yield acks
        h = HistogramMetricFamily("hashplane_command_latency_seconds",
                                  "Command issue to ack, s", labels=["command_kind"])
        for kind, counts in sorted(p.latency_buckets.items()):
            cum, buckets = 0, []
            for bound, c in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cum += c
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
            h.add_metric([kind], buckets, p.latency_sum.get(kind, 0.0))
        yield h
        lag = GaugeMetricFamily("hashplane_consumer_lag", "Records behind the end, per "
                                "consumer group and topic", labels=["group", "topic"])
        for (group, topic), n in sorted(p.lag.items()):
            lag.add_metric([group, topic], n)
        yield lag
        if p.lag_at:
            yield GaugeMetricFamily("hashplane_consumer_lag_age_seconds",
                                    "Age of the lag figures", value=time.time() - p.lag_at)
        yield GaugeMetricFamily("hashplane_live_subscribers", "Open server-sent event streams",
                                value=len(self.live.subscribers))

    def _fleet(self) -> Iterator[Metric]:
        f = self.live.fleet
        states: dict[str, int] = {}
        for a in f.asics.values():
            states[a.state] = states.get(a.state, 0) + 1
        g = GaugeMetricFamily("hashplane_asics", "ASICs by last reported state",
                              labels=["state"])
        for state, n in sorted(states.items()):
            g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily("hashplane_fleet_hashrate_ths", "Sum of ASIC hashrates, TH/s",
                                value=sum(a.hashrate_ths for a in f.asics.values()))
        yield GaugeMetricFamily("hashplane_fleet_power_watts", "Sum of ASIC and GPU draw, W",
                                value=sum(a.power_w for a in f.asics.values())
                                + sum(x.power_w for x in f.gpus.values()))
        t = GaugeMetricFamily("hashplane_gpu_temperature_celsius", "GPU temperature",
                              labels=["device"])
        hr = GaugeMetricFamily("hashplane_gpu_hashrate_mhs", "GPU hashrate, MH/s",
                               labels=["device"])
        for d, x in sorted(f.gpus.items()):
            t.add_metric([d], x.temp_c)
            hr.add_metric([d], x.hashrate_mhs)
        yield t
        yield hr
        if (e := f.energy) is not None:
            for name, value, doc in (
                    ("supply_watts", e.supply_kw, "Measured supply"),
                    ("available_watts", e.available_kw, "Supply minus the safety margin"),
                    ("load_watts", e.load_kw, "Measured load"),
                    ("headroom_watts", e.headroom_kw, "Available minus load"),
                    ("target_load_watts", e.target_load_kw, "Load the site should run at")):
                yield GaugeMetricFamily(f"hashplane_energy_{name}", doc, value=value * 1000.0)
            if e.frequency_hz is not None:
                yield GaugeMetricFamily("hashplane_grid_frequency_hertz", "Grid frequency",
                                        value=e.frequency_hz)
            band = GaugeMetricFamily("hashplane_energy_band", "Demand-response band in force "
                                     "(1 on the current band)", labels=["band"])
            band.add_metric([e.band], 1)
            yield band
        up = GaugeMetricFamily("hashplane_uplink_up", "Last uplink probe succeeded (1) or "
                               "failed (0), per probe target", labels=["target"])
        for target, u in sorted(f.uplinks.items()):
            up.add_metric([target], 1.0 if u.up else 0.0)
        yield up
        firing = GaugeMetricFamily("hashplane_alerts_firing", "Alerts firing",
                                   labels=["severity"])
        by_sev: dict[str, int] = {"info": 0, "warning": 0, "critical": 0}
        for fired in f.firing.values():
            by_sev[fired.severity] = by_sev.get(fired.severity, 0) + 1
        for sev, n in sorted(by_sev.items()):
            firing.add_metric([sev], n)
        yield firing

    def _in_process(self) -> Iterator[Metric]:
        if self.connectors is not None:
            ev = CounterMetricFamily("hashplane_connector_events", "Events a connector emitted",
                                     labels=["connector"])
            err = CounterMetricFamily("hashplane_connector_errors", "Connector errors",
                                      labels=["connector"])
            dl = CounterMetricFamily("hashplane_connector_dlq", "Inputs a connector dead-"
                                     "lettered", labels=["connector"])
            for name, s in sorted(self.connectors().items()):
                ev.add_metric([name], s.events)
                err.add_metric([name], s.errors)
                dl.add_metric([name], s.dlq)
            yield from (ev, err, dl)
        if self.outbox is not None and (o := self.outbox()) is not None:
            dropped = CounterMetricFamily(
                "hashplane_outbox_dropped", "Readings dropped because the connectors' outbox "
                "was full during a broker outage", labels=["kind"])
            for kind, n in sorted(o.dropped_by_kind.items()):
                dropped.add_metric([kind], n)
            yield dropped
            yield GaugeMetricFamily("hashplane_outbox_buffered",
                                    "Readings waiting for the broker", value=o.buffered)
            yield CounterMetricFamily("hashplane_outbox_resent", "Records sent again to a "
                                      "broker that restarted empty", value=o.resent)
        if self.sink is not None and (s := self.sink()) is not None:
            yield CounterMetricFamily("hashplane_sink_rows", "Rows written to ClickHouse",
                                      value=s.inserted)
            yield CounterMetricFamily("hashplane_sink_insert_failures", "Failed inserts",
                                      value=s.insert_failures)
            yield CounterMetricFamily("hashplane_sink_duplicates_skipped",
                                      "Redelivered records not written again",
                                      value=s.duplicates_skipped)
            yield GaugeMetricFamily("hashplane_sink_last_insert_seconds",
                                    "Duration of the last insert", value=s.last_insert_s)


def exposition(collector: HashplaneCollector) -> bytes:
    """The text exposition format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
