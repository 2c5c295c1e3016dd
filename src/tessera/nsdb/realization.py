"""The state tables of realization feedback (`--wait`), defined once for both ends.

A write made with `?wait=true` is followed by a *request*: the API takes the next value
of the cluster-wide counter `REALIZE_COUNTER` and writes it into the request table of
each agent the write concerns. ZooKeeper delivers one session's notifications in the
order of the writes, so by the time an agent sees request `n` it has already been sent
every topology change committed before `n` was taken. Once its cache holds them and
the flows they invalidate are gone from the datapath, the agent writes `n` (or more)
into its *report* entry, and the API returns when every concerned agent has reported at
least its `n`.

A request table per host (not one shared table) keeps the traffic per wait
proportional to the agents concerned: each agent watches only its own. A request is
its own entry, never an overwrite, so that of two concurrent requests to one host
neither can hide the other from the agent; an agent reports the largest number it has
seen, which covers every smaller one (it was taken after their writes). Requests are
ephemeral entries of the API session that wrote them; reports are ephemeral entries of
the agent, so a dead agent's report vanishes with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

REALIZE_COUNTER = "realize"
"""The counter request numbers come from (`Nsdb.next_id`)."""

REALIZED = "realized"
"""key: host id; value: `Report` JSON. Ephemeral, owned by the host's agent."""

_REQUEST_PREFIX = "realize_request/"


def request_table(host_id: str) -> str:
    """The name of a host's request table: key the request number, value empty."""
    return f"{_REQUEST_PREFIX}{host_id}"


@dataclass(frozen=True)
class Report:
    """What an agent has applied: every change committed before request `seq`."""

    seq: int
    at: float  # Unix time of the report, for operators
    took: float = 0.0  # seconds from the request's delivery to the report (`Server-Timing`)

    def encode(self) -> str:
        return json.dumps({"seq": self.seq, "at": self.at, "took": round(self.took, 6)})


def decode_report(value: str) -> Report | None:
    """The report, or None for an entry that is not one (never trusted blindly)."""
    try:
        data: Any = json.loads(value)
        return Report(int(data["seq"]), float(data.get("at", 0.0)), float(data.get("took", 0.0)))
    except (ValueError, TypeError, KeyError):
        return None


def decode_request(key: str) -> int | None:
    """The request number a request table key holds."""
    try:
        return int(key)
    except ValueError:
        return None


BARRIER_TABLE = "realize_barrier"
"""key: an API process's id; value empty. Ephemeral: an entry its own watch is sure to
be sent, so that subscribing to the table tells when the client's notifications queued
before have all been delivered (`tessera.api.reach_feed`)."""
