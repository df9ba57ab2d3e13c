"""Pool and site share ratios and seed-000 rewards of a site: one agent over two folds.

Worker and device ratios are folded on the shares topic's partitions (agents/share_ratio.py);
pool and site ratios and the rewards need every partition, so they are folded here, from
the site feed.  Working state only: open windows are rebuilt from live data after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents import rewards, share_ratio
from agents.spec import AgentSpec, members
from schemas.envelope import Event
from schemas.events import GpuTelemetryObserved, ShareCountsObserved
from schemas.settings import Settings

SiteSharesInput = ShareCountsObserved | GpuTelemetryObserved


@dataclass(frozen=True, slots=True)
class SiteSharesParams:
    """Windows and the reward's temperature limit (from Settings)."""

    ratios: share_ratio.RatioParams = field(default_factory=share_ratio.RatioParams)
    temp_max_c: float = 90.0


@dataclass(slots=True)
class SiteSharesState:
    """One site's rewards windows and its pool and site ratio windows (``scope/subject``)."""

    rewards: rewards.RewardState = field(default_factory=rewards.RewardState)
    ratios: dict[str, share_ratio.SubjectState] = field(default_factory=dict)


def params(s: Settings) -> SiteSharesParams:
    """Configuration from Settings."""
    return SiteSharesParams(share_ratio.params(s), s.reward_temp_max_c)


def step(state: SiteSharesState, event: SiteSharesInput,
         p: SiteSharesParams) -> tuple[SiteSharesState, list[Event]]:
    """Fold one event into the rewards and, for share counts, the pool and site ratios."""
    r = p.ratios
    _, out = rewards.step(state.rewards, event, windows=r.windows, grace_s=r.grace_s,
                          temp_max_c=p.temp_max_c)
    published: list[Event] = list(out)
    if isinstance(event, ShareCountsObserved):
        for scope in ("pool", "site"):
            subject = share_ratio.SUBJECTS[scope](event)
            key = f"{scope}/{subject}"
            state.ratios[key], metrics = share_ratio.step(
                state.ratios.get(key, share_ratio.SubjectState()), event, scope=scope,
                subject=subject, windows=r.windows, grace_s=r.grace_s, update_s=r.update_s)
            published += metrics
    return state, published


SPEC = AgentSpec[SiteSharesState, SiteSharesParams](
    name="site_shares", source=rewards.SOURCE, inputs=members(SiteSharesInput),
    params=params, state=SiteSharesState, step=step)
