"""The simulated power market: a day-ahead price list and real-time spikes, served over HTTP
as JSON the way a price API answers (per MWh, UTC intervals), on the wall clock that the
connectors stamp their events with.  Scenarios move it (``price-spike``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI

HOUR = 3600.0


@dataclass
class PowerMarket:
    """Flat day-ahead hours at ``base_per_mwh`` and the real-time intervals scenarios add."""

    base_per_mwh: float = 45.0
    currency: str = "USD"
    hashprice_per_th_day: float = 0.05
    real_time: list[list[float]] = field(default_factory=list)  # [start, end, price]

    def spike(self, price_per_mwh: float | None, now: float | None = None) -> None:
        """From ``now`` the real-time price is ``price_per_mwh`` (for a day, until ended);
        None ends the spike in force at ``now``."""
        now = time.time() if now is None else now
        for r in self.real_time:
            if r[0] <= now < r[1]:
                r[1] = now
        if price_per_mwh is not None:
            self.real_time.append([now, now + 24 * HOUR, price_per_mwh])

    def document(self, now: float | None = None) -> dict[str, Any]:
        """The published list: the day-ahead hours from an hour ago to a day ahead, and the
        real-time intervals of the last day."""
        now = time.time() if now is None else now
        first = (now // HOUR - 1) * HOUR

        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, UTC).isoformat()

        rows = [{"start": iso(first + k * HOUR), "end": iso(first + (k + 1) * HOUR),
                 "price_per_mwh": self.base_per_mwh, "market": "day_ahead"} for k in range(26)]
        rows += [{"start": iso(s), "end": iso(e), "price_per_mwh": p, "market": "real_time"}
                 for s, e, p in self.real_time if e > now - 24 * HOUR]
        return {"currency": self.currency, "prices": rows}


def market_app(market: PowerMarket) -> FastAPI:
    app = FastAPI(title="power market (simulated)")

    @app.get("/prices.json")
    def prices() -> dict[str, Any]:
        return market.document()

    return app
