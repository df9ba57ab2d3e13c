"""Every agent of hashplane, in one list.

The worker (streams/worker.py) runs each enabled spec as a Faust agent; ``rebuild`` and
``restore`` (streams/replay.py) fold the site agents that keep durable state.  A new agent
is its module (a state, a ``step`` and a ``SPEC``) plus one line here.
"""

from __future__ import annotations

from typing import Any

from agents import (
    alerts,
    compute,
    energy,
    failover,
    profit,
    scheduler,
    share_ratio,
    site_shares,
    tuning,
)
from agents.spec import AgentSpec

AGENTS: tuple[AgentSpec[Any, Any], ...] = (
    share_ratio.SPEC,
    compute.ENDPOINT_SPEC,
    site_shares.SPEC,
    energy.SPEC,
    scheduler.SPEC,
    failover.SPEC,
    profit.SPEC,
    compute.SPEC,
    alerts.SPEC,
    tuning.SPEC,
)


def site_agents() -> tuple[AgentSpec[Any, Any], ...]:
    """The agents that fold a whole site (they read the site feed)."""
    return tuple(a for a in AGENTS if a.scope == "site")


def durable_site_agents() -> tuple[AgentSpec[Any, Any], ...]:
    """The site agents whose state outlives a restart: what ``rebuild`` folds."""
    return tuple(a for a in AGENTS if a.scope == "site" and a.durable is not None)
