"""The connection table on disk, so a restarted agent still knows its connections.

A restart keeps the kernel flows forwarding (they are adopted), but a connection whose
reply, NAT rewrite or firewall verdict depends on state would be judged anew without
it. The agent writes its table on a graceful stop and every `SAVE_INTERVAL` seconds, and
loads it at start: at most one interval of new state is lost by a crash, and peers still
hold what they were sent.

Monotonic times do not survive a restart, so the file holds each entry's idle time at
the moment of saving and the wall-clock time of the save; loading ages every entry by
the downtime as well. The file is written whole to a temporary name and renamed, so a
crash mid-write leaves the previous file; a file that cannot be read is ignored (logged)
rather than stopping the agent.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

from tessera.agent.flowstate.table import ConnTable
from tessera.agent.flowstate.wire import WireError, decode_record, encode_record

log = logging.getLogger(__name__)

FORMAT = 1
SAVE_INTERVAL = 10.0  # seconds between periodic saves
FILE_NAME = "flowstate.json"


def state_file(state_dir: Path, host_id: str) -> Path:
    """Where the agent of `host_id` keeps its table under its --state-dir (hosts may
    share one: the lab's do). A save writes `<name>.tmp` first."""
    return state_dir / f"flowstate-{host_id}.json"


def save(path: Path, table: ConnTable, now: float, wall_now: float) -> int:
    """Write the table; returns the number of entries written."""
    items: list[dict[str, Any]] = []
    for tracked in table.snapshot():
        record = encode_record("add", tracked.entry, tracked.timeout)
        items.append(
            {
                "record": base64.b64encode(record).decode(),
                "idle": max(0.0, now - tracked.last_seen),
                "timeout": tracked.timeout,
                # Who must hear of its removal, whose copy it is, how it was closing.
                "tcp_flags": tracked.tcp_flags,
                "origin": tracked.origin,
                "shared": sorted(tracked.shared),
            }
        )
    data = json.dumps({"format": FORMAT, "saved_at": wall_now, "entries": items})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data)
    os.replace(tmp, path)
    return len(items)


def load(path: Path, table: ConnTable, now: float, wall_now: float) -> int:
    """Add the saved entries still alive to `table`; returns how many were loaded.
    Entries are decoded with the wire format's checks, so a damaged file creates none
    of its bad entries."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            log.warning("flow state file %s has format %r: ignored", path, data.get("format"))
            return 0
        downtime = max(0.0, wall_now - float(data["saved_at"]))
        items = list(data["entries"])
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("flow state file %s cannot be read: %s", path, exc)
        return 0
    loaded = 0
    for item in items:
        try:
            record = base64.b64decode(item["record"], validate=True)
            _op, entry, timeout = decode_record(record)
            idle = float(item["idle"]) + downtime
            timeout = min(float(item["timeout"]), timeout)
            # Absent from files of earlier versions: nothing seen, ours, pushed nowhere.
            tcp_flags = int(item.get("tcp_flags") or 0) & 0xFF
            origin = item.get("origin")
            origin = str(origin) if origin is not None else None
            shared = [str(a) for a in item.get("shared") or ()]
        except (WireError, ValueError, KeyError, TypeError) as exc:
            log.warning("flow state file %s: skipped a bad entry (%s)", path, exc)
            continue
        if idle >= timeout:
            continue
        table.add(
            entry, now - idle, timeout=timeout, origin=origin, shared=shared, tcp_flags=tcp_flags
        )
        loaded += 1
    return loaded
