"""Simulation time: wall time times a speed factor, so scenarios can run accelerated."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta


class SimClock:
    """``now()`` advances ``speed`` simulated seconds per real second from ``start``."""

    def __init__(self, speed: float = 1.0, start: datetime | None = None):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.start = start or datetime.now(UTC)
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        """Simulated seconds since start."""
        return (time.monotonic() - self._t0) * self.speed

    def now(self) -> datetime:
        """Simulated UTC time."""
        return self.start + timedelta(seconds=self.elapsed())

    async def sleep(self, sim_seconds: float) -> None:
        """Sleep for ``sim_seconds`` of simulated time."""
        await asyncio.sleep(max(0.0, sim_seconds) / self.speed)
