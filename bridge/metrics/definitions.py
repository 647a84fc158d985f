"""Every metric of the bridge, and the one-line calls that move them.

Module-level, as prometheus_client intends, in a registry of the bridge's own (not the
library's global one, so importing a library that registers metrics adds nothing here).
Tests read values before and after, never reset. Each call site is one line; anything a
label gets from outside goes through labels.one_of first, so no label can ever hold a user
ID, room ID or server name. Imports nothing of ours.
"""
from __future__ import annotations

import contextvars
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from bridge.metrics import labels

REGISTRY = CollectorRegistry(auto_describe=True)
# The process's CPU, memory and file descriptors, the interpreter and its garbage collector.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_PREFIX = "stranger_bridge_"

# Several processes (bridge/cluster/); 0 when the bridge runs as one.
CLUSTER_PARTITIONS = Gauge(_PREFIX + "cluster_partitions_owned",
                           "Partitions of the rooms this process handles.", registry=REGISTRY)
CLUSTER_LEADER = Gauge(_PREFIX + "cluster_leader",
                       "1 while this process leads (runs the timers and pruning).",
                       registry=REGISTRY)
CLUSTER_PROCESSES = Gauge(_PREFIX + "cluster_processes",
                          "Bridge processes alive, as this one last counted them.",
                          registry=REGISTRY)

MATCHES = Counter(_PREFIX + "matches", "Conversations made: two users paired.",
                  registry=REGISTRY)
ENDINGS = Counter(_PREFIX + "conversation_endings", "Conversations ended, by why.",
                  ["reason"], registry=REGISTRY)
TIME_TO_MATCH = Histogram(
    _PREFIX + "time_to_match_seconds",
    "From a user's !start (or requeue) to being paired, per user paired.",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600), registry=REGISTRY)
RELAY_LATENCY = Histogram(
    _PREFIX + "relay_latency_seconds",
    "From an event's arrival at the bridge (its transaction recorded) to its relayed copy "
    "sent to the partner's room.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
TRANSACTION_SECONDS = Histogram(
    _PREFIX + "transaction_seconds",
    "Handling one appservice transaction from the homeserver, until answered.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY)
REFUSED = Counter(_PREFIX + "events_refused", "Events not relayed (the sender was told), by kind.",
                  ["kind"], registry=REGISTRY)
UNDECRYPTABLE = Counter(
    _PREFIX + "undecryptable_events",
    "Encrypted events the bridge could not decrypt (the sender was told), by where.",
    ["where"], registry=REGISTRY)
ERRORS = Counter(_PREFIX + "errors", "Errors logged, by the component that logged them.",
                 ["component"], registry=REGISTRY)
REPORTS = Counter(_PREFIX + "reports", "Reports filed by users (!report).", registry=REGISTRY)
SANCTIONS = Counter(
    _PREFIX + "sanctions",
    "Sanctions imposed: bans and suspensions of users (by a moderator or automatically), "
    "server bans.", ["kind", "source"], registry=REGISTRY)

# Every fixed label value starts at 0, so a rate() works from the first scrape.
for _reason in labels.END_REASONS:
    ENDINGS.labels(_reason)
for _kind in labels.REFUSED_KINDS:
    REFUSED.labels(_kind)
for _where in labels.UNDECRYPTABLE_PLACES:
    UNDECRYPTABLE.labels(_where)
for _component in labels.COMPONENTS:
    ERRORS.labels(_component)
for _kind in labels.SANCTION_KINDS:
    SANCTIONS.labels(_kind, "moderator")
SANCTIONS.labels("suspended", "automatic")

# When the event being handled reached the bridge (a Unix time; set by the dispatcher for
# the handling of each event: the relayer reads it once the copy is sent).
_received_at: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "stranger_bridge_received_at", default=None)


def conversation_ended(reason: str) -> None:
    ENDINGS.labels(labels.one_of(reason, labels.END_REASONS)).inc()


def matched(*waited_seconds: float) -> None:
    """A conversation was made; how long each of the users paired had waited."""
    MATCHES.inc()
    waited(*waited_seconds)


def waited(*seconds: float) -> None:
    for s in seconds:
        TIME_TO_MATCH.observe(max(0.0, s))


def refused(kind: str) -> None:
    """An event was refused; `kind` is its notice key (refused_<kind>) or the bare kind."""
    REFUSED.labels(labels.one_of(kind.removeprefix("refused_"), labels.REFUSED_KINDS)).inc()


def undecryptable(where: str) -> None:
    UNDECRYPTABLE.labels(labels.one_of(where, labels.UNDECRYPTABLE_PLACES)).inc()


def reported() -> None:
    REPORTS.inc()


def sanctioned(kind: str, source: str) -> None:
    SANCTIONS.labels(labels.one_of(kind, labels.SANCTION_KINDS),
                     labels.one_of(source, labels.SANCTION_SOURCES)).inc()


def handling(received_at: float | None) -> contextvars.Token:
    """The dispatcher is about to handle an event that arrived at `received_at` (Unix time);
    reset with the token returned once it is handled."""
    return _received_at.set(received_at)


def done_handling(token: contextvars.Token) -> None:
    _received_at.reset(token)


def relayed() -> None:
    """The relayed copy of the event being handled was just sent."""
    received_at = _received_at.get()
    if received_at is not None:
        RELAY_LATENCY.observe(max(0.0, time.time() - received_at))

