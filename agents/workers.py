"""Faust wiring: thin agents around the pure step functions (STYLE.md 1-2)."""

from __future__ import annotations

import faust

from agents import share_ratio
from schemas.events import ShareCountsObserved
from schemas.registry import topic
from streams.app import create_app, decoded, raw_topic, send
from streams.settings import Settings


def register_share_ratio(app: faust.App, settings: Settings) -> None:
    """Share ratios per worker over ``settings.share_window_s`` windows -> metrics.shares."""
    shares, out, dlq = raw_topic(app, "shares"), raw_topic(app, "metrics.shares"), \
        raw_topic(app, "dlq")
    state = app.Table(f"share_ratio_worker_{settings.share_window_s}s", default=lambda: None,
                      partitions=topic("shares").partitions)

    @app.agent(shares, name="share_ratio")
    async def share_ratio_agent(stream: faust.StreamT) -> None:
        async for event in decoded(stream, "shares", dlq, settings.site, share_ratio.SOURCE):
            assert isinstance(event, ShareCountsObserved)
            s = share_ratio.WindowState.from_primitive(state[event.worker])
            s, metrics = share_ratio.step(s, event, window_s=settings.share_window_s,
                                          grace_s=settings.share_grace_s)
            state[event.worker] = s.to_primitive()
            for m in metrics:
                await send(out, m)


def build_app(settings: Settings) -> faust.App:
    """The worker app with every agent registered."""
    app = create_app(settings)
    register_share_ratio(app, settings)
    return app
