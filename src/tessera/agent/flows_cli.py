"""`tessera flows` and `tessera conntrack [--host H] [--json]`: a host's installed flows
and its connection state, from its agent.

Reads the agent's control socket (see `tessera.agent.control`); `--host` takes a host id
or the name the agent registered (`h1` in the lab). Without it, the only agent running
on this machine is asked.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from tessera.agent.control import AgentEndpoint, list_endpoints, request
from tessera.client.errors import BadArgument, UserError

app = typer.Typer(add_completion=False)


def find_agent(host: str | None) -> AgentEndpoint:
    agents = list_endpoints()
    if not agents:
        raise UserError("no tessera agent runs on this machine (no agent socket found)")
    if host is None:
        if len(agents) > 1:
            names = ", ".join(a.name or a.host_id for a in agents)
            raise BadArgument(f"several agents run here ({names}): choose one with --host")
        return agents[0]
    for agent in agents:
        if host == agent.host_id:
            return agent
    named = [a for a in agents if a.name == host]
    if len(named) == 1:
        return named[0]
    if named:  # two labs may both have an h1
        ids = ", ".join(a.host_id for a in named)
        raise BadArgument(f"several agents are named '{host}' ({ids}): give the host id")
    names = ", ".join(a.name or a.host_id for a in agents)
    raise BadArgument(f"no agent of host '{host}' runs here (agents: {names})")


def _ago(last_used: float | None, now: float) -> str:
    if last_used is None:
        return "never"
    return f"{max(0.0, now - last_used):.1f}s"


def _match_text(match: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in match.items()) or "*"


def action_text(action: dict[str, Any]) -> str:
    kind = action.get("type", "?")
    # A flag reads as its name: tunnel(5,198.18.0.2,commit).
    args = ",".join(k if v is True else f"{v}" for k, v in action.items() if k != "type")
    return f"{kind}({args})" if args else str(kind)


def _ask(host: str | None, op: str) -> tuple[Any, Any]:
    """The agent `host` names and its answer to `op` on its control socket; one-line
    errors when it cannot be reached or answers with an error."""
    agent = find_agent(host)
    try:
        answer = request(agent.socket, op)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the agent of {agent.name or agent.host_id}: {exc}") from None
    if isinstance(answer, dict) and "error" in answer:
        raise UserError(f"the agent of {agent.name or agent.host_id}: {answer['error']}")
    return agent, answer


@app.command()
def flows(
    host: Annotated[
        str | None, typer.Option("--host", help="Host id or name of the agent to ask.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a host's installed flows: match, actions, counters and tags."""
    agent, answer = _ask(host, "flows")
    if json_output:
        typer.echo(json.dumps(answer, indent=2))
        return
    now = float(answer.get("now", time.monotonic()))
    table = Table(box=box.SIMPLE, title=f"flows of {answer.get('name') or agent.host_id}")
    for header in ("match", "actions", "packets", "bytes", "idle", "expiry", "tags"):
        table.add_column(header, overflow="fold")
    for f in answer.get("flows", []):
        table.add_row(
            _match_text(f["match"]),
            " ".join(action_text(a) for a in f["actions"]) or "drop",
            str(f["packets"]),
            str(f["bytes"]),
            _ago(f.get("last_used"), now),
            str(f.get("expiry", "")),
            " ".join(f.get("tags", [])),
        )
    Console(width=200).print(table)


# `tessera conntrack [--host H] [--json]`: the same socket, the op "conntrack".
conntrack_app = typer.Typer(add_completion=False)


def _key_text(key: dict[str, Any]) -> str:
    return str(key.get("text", ""))


@conntrack_app.command()
def conntrack(
    host: Annotated[
        str | None, typer.Option("--host", help="Host id or name of the agent to ask.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the connection-tracking entries and NAT bindings a host's agent holds."""
    agent, answer = _ask(host, "conntrack")
    if json_output:
        typer.echo(json.dumps(answer, indent=2))
        return
    table = Table(box=box.SIMPLE, title=f"connections of {agent.name or agent.host_id}")
    for header in ("forward", "return", "device", "nat", "state", "idle", "expires in", "flows"):
        table.add_column(header, overflow="fold")
    for e in answer.get("entries", []):
        nat = e.get("nat")
        port = "" if not nat or nat.get("port") is None else f":{nat['port']}"
        table.add_row(
            _key_text(e["forward"]),
            _key_text(e["return"]),
            str(e.get("zone", "")),
            f"{nat['side']}→{nat['ip']}{port}" if nat else "",
            str(e.get("state", "")),
            f"{e.get('idle', 0.0):.1f}s",
            f"{e.get('expires_in', 0.0):.1f}s",
            "datapath" if e.get("datapath") else str(e.get("flows", 0)),
        )
    console = Console(width=200)
    console.print(table)
    blocks = answer.get("snat_blocks", [])
    if blocks:
        leases = Table(box=box.SIMPLE, title="SNAT port blocks leased")
        for header in ("address", "ports", "in use"):
            leases.add_column(header)
        for b in blocks:
            leases.add_row(str(b["ip"]), str(b["ports"]), str(b["used"]))
        console.print(leases)
