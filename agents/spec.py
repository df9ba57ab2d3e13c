"""What an agent is, in one place: a spec beside its pure step.

The Faust runner (streams/worker.py) and the rebuild fold (streams/replay.py) read nothing
else: an agent's name, the events it folds (its input union), its parameters from
``Settings``, a fresh state, ``step``, and what of the state outlives a restart (its table).
The topics an agent subscribes to follow from its input union through the registry.

Two scopes:

* ``site``: one state per site, folded from every partition of the topics it reads (the
  runner brings the partitioned ones through the single-partition site feed).
* ``partition``: one state per record key (a device), on the input topic's own partitions;
  the step also gets the record's (partition, offset) so a redelivery changes nothing.

Two lanes: ``hashplane up`` runs the ``control`` agents (the demand-response path) in a
worker process of their own and every other agent in the ``main`` one; ``hashplane worker``
runs both lanes in one process unless ``--lane`` names one.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from schemas.envelope import Event
from schemas.settings import Settings

S = TypeVar("S")
Lane = Literal["control", "main"]
#: what ``hashplane worker --lane`` takes: one lane, or ``all`` (every agent in one process)
WORKER_LANES: tuple[str, ...] = ("all", *typing.get_args(Lane))
P = TypeVar("P")

#: ``step(state, event, params) -> (state, outputs)``; a partition-scoped step also takes the
#: record's position: ``step(state, event, params, (partition, offset) | None)``.
Step = Callable[..., tuple[Any, Sequence[Event]]]


def members(union: Any) -> tuple[type[Event], ...]:
    """The event classes of an input union (``A | B``) or of a single class."""
    args = typing.get_args(union) if isinstance(union, types.UnionType) or \
        typing.get_origin(union) is typing.Union else (union,)
    return tuple(args)


def table_key(site: str, key: str) -> str:
    """A durable key in its table: ``site/key``; the empty key is the site's own entry."""
    return f"{site}/{key}" if key else site


@dataclass(frozen=True)
class Durable(Generic[S]):
    """What of a site agent's state survives a restart, and how it is kept in its table.

    Keys are relative to the site (see ``table_key``).  The state's ``dirty`` set names the
    keys changed since the runner last saved them; only those are written.  A saved value of
    None (or False) means nothing is kept under that key."""

    table: str
    keys: Callable[[Any], Iterable[str]]  # every key the state holds now
    save: Callable[[Any, str], Any]  # a key's primitive value
    load: Callable[[Any, str, Any], None]  # put a saved value back into a state
    #: inputs whose effect outlives the restore window (folded from all of history at a
    #: restore: acks into cycles, operator caps, a miner's home pool)
    ledger: tuple[type[Event], ...] = ()


@dataclass(frozen=True)
class AgentSpec(Generic[S, P]):
    """One agent: everything the runner and the fold need to know about it."""

    name: str  # the Faust agent's name (a persistent name: STYLE.md 12)
    source: str  # ``source`` of what it publishes and of the dead letters it writes
    inputs: tuple[type[Event], ...]  # the classes it folds (``members(Union)``)
    params: Callable[[Settings], P]
    state: Callable[[], S]
    step: Step
    scope: Literal["site", "partition"] = "site"
    durable: Durable[S] | None = None  # site scope: kept per key in ``durable.table``
    #: partition scope: the table holding each key's whole state ("" = stateless)
    partition_table: str = ""
    #: partition scope: a key's state from what its table holds (None: nothing yet), and
    #: back; the runner keeps each key's live state beside the table and loads it again
    #: only when the table's value is not the one it last saved (restored, rebalanced)
    load: Callable[[Any], S] | None = None
    save: Callable[[S], Any] | None = None
    #: narrower than the input union: only these records are folded (and forwarded)
    accepts: Callable[[Event], bool] | None = None
    #: what the live agent publishes of a step's outputs, given the processing time (a
    #: guard the fold of recorded history does not apply); called for a step with outputs
    #: and for the first event a process folds into a state (a telemetry reading that
    #: decides nothing skips it: the site agents fold tens of thousands a second)
    live: Callable[[S, Event, list[Event], datetime, P], list[Event]] | None = None
    #: whether a step may take long (a model fit): the runner runs it off the event loop
    offload: Callable[[S, Event, P], bool] | None = None
    #: make the state durable (flush the changelog) before its outputs go out
    commit_first: bool = False
    enabled: Callable[[Settings], bool] = lambda _: True
    #: the worker process it runs in when the lanes are split (``hashplane worker --lane``):
    #: ``control`` for the demand-response path (meter -> energy -> scheduler), which must not
    #: share an event loop and a producer with the fleet's telemetry and share counts
    lane: Lane = "main"

    def runs_in(self, lane: str) -> bool:
        """Whether a worker of ``lane`` runs this agent (``all``: every agent)."""
        return lane in ("all", self.lane)

    def wants(self, event: Event) -> bool:
        """Whether this agent folds ``event``."""
        return isinstance(event, self.inputs) and (self.accepts is None or self.accepts(event))
