"""Faust wiring: thin agents around the pure step functions (STYLE.md 1-2).

Each ``register_*`` takes an optional ``publish`` coroutine; by default it sends on the
registry topic of the event.  Agent tests pass a recorder instead of a broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust

from agents import share_ratio
from schemas.envelope import Event
from schemas.events import ShareCountsObserved
from schemas.registry import TOPICS, topic, topic_of
from streams.app import create_app, decoded, raw_topic, send
from streams.settings import Settings

Publish = Callable[[Event], Awaitable[None]]


def topic_publisher(app: faust.App) -> Publish:
    """Publish an event on its registry topic through the app's producer."""
    topics = {spec.name: raw_topic(app, spec.name) for spec in TOPICS}

    async def publish(event: Event) -> None:
        await send(topics[topic_of(type(event)).name], event)

    return publish


def register_share_ratio(app: faust.App, settings: Settings,
                         publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Share ratios per worker over ``settings.share_window_s`` windows -> metrics.shares."""
    publish = publish or topic_publisher(app)
    state = app.Table(f"share_ratio_worker_{settings.share_window_s}s", default=lambda: None,
                      partitions=topic("shares").partitions)

    @app.agent(raw_topic(app, "shares"), name="share_ratio")
    async def share_ratio_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, "shares", publish, settings.site, share_ratio.SOURCE):
            assert isinstance(event, ShareCountsObserved)
            s = share_ratio.WindowState.from_primitive(state[event.worker])
            s, metrics = share_ratio.step(s, event, window_s=settings.share_window_s,
                                          grace_s=settings.share_grace_s)
            state[event.worker] = s.to_primitive()
            for m in metrics:
                await publish(m)

    return share_ratio_agent


def build_app(settings: Settings) -> faust.App:
    """The worker app with every agent registered."""
    app = create_app(settings)
    register_share_ratio(app, settings)
    return app
