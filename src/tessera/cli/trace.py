"""`tessera trace`: describe a packet, see what the virtual network does with it.

The description is checked here (one-line errors before any request), sent to the API's
`POST /traces`, and the answer — `trace_packet`'s JSON — is drawn as a tree (`render_tree`,
`render_text` here), or printed as is with `--json`.

    tessera trace --port PORT_ID --src-mac 02:00:00:00:00:01 --dst-mac 02:7e:55:00:00:01 \\
        --src-ip 10.0.1.5 --dst-ip 10.0.2.5 --protocol tcp --dst-port 22
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.tree import Tree

from tessera.client.errors import BadArgument
from tessera.clikit.commands import command
from tessera.clikit.output import printable_data
from tessera.clikit.session import Session
from tessera.simulation.trace import PacketDescription

app = typer.Typer(add_completion=False)


def _protocol(value: str | None) -> str | int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    if value.lower() in ("tcp", "udp", "icmp", "arp"):
        return value.lower()
    raise BadArgument(f"--protocol '{value}' is not tcp, udp, icmp, arp or a number")


def describe(fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of `POST /traces`, validated as the API will validate it."""
    body = {k: v for k, v in fields.items() if v is not None}
    try:
        PacketDescription.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", exc)).removeprefix("Value error, ")
        raise BadArgument(f"{where}: {message}" if where else message) from None
    return body


@command(app, "trace")
def trace(
    session: Session,
    port: Annotated[str, typer.Option("--port", help="Ingress port id.")],
    src_mac: Annotated[str, typer.Option("--src-mac", help="Source MAC.")],
    dst_mac: Annotated[
        str | None, typer.Option("--dst-mac", help="Destination MAC (default broadcast).")
    ] = None,
    vlan: Annotated[int | None, typer.Option("--vlan", help="802.1Q VLAN id.")] = None,
    eth_type: Annotated[
        int | None, typer.Option("--eth-type", help="EtherType of a frame without IP.")
    ] = None,
    src_ip: Annotated[str | None, typer.Option("--src-ip")] = None,
    dst_ip: Annotated[str | None, typer.Option("--dst-ip")] = None,
    protocol: Annotated[
        str | None, typer.Option("--protocol", help="tcp, udp, icmp, arp or an IP protocol number.")
    ] = None,
    src_port: Annotated[int | None, typer.Option("--src-port")] = None,
    dst_port: Annotated[int | None, typer.Option("--dst-port")] = None,
    icmp_type: Annotated[int | None, typer.Option("--icmp-type")] = None,
    icmp_code: Annotated[int | None, typer.Option("--icmp-code")] = None,
    arp_op: Annotated[str | None, typer.Option("--arp-op", help="request or reply.")] = None,
    ttl: Annotated[int | None, typer.Option("--ttl")] = None,
    fragment: Annotated[
        str | None, typer.Option("--fragment", help="none, first or later.")
    ] = None,
) -> None:
    """Explain what the virtual network does with a packet: every device, chain and rule."""
    body = describe(
        {
            "port_id": port,
            "src_mac": src_mac,
            "dst_mac": dst_mac,
            "vlan_id": vlan,
            "eth_type": eth_type,
            "src_ip": src_ip,
            "dst_ip": dst_ip,
            "protocol": _protocol(protocol),
            "src_port": src_port,
            "dst_port": dst_port,
            "icmp_type": icmp_type,
            "icmp_code": icmp_code,
            "arp_op": arp_op,
            "ttl": ttl,
            "fragment": fragment,
        }
    )
    answer = session.api.post("traces", body)
    if session.json_output:
        typer.echo(json.dumps(answer, indent=2))
        return
    Console(soft_wrap=True).print(render_tree(answer))


# -- rendering ------------------------------------------------------------------------------

_STYLE = {
    "drop": "bold red",
    "output": "bold green",
    "consumed": "bold cyan",
    "hold": "bold yellow",
    "generated": "magenta",
    "bridge": "bold",
    "router": "bold",
    "chain": "blue",
    "rule": "blue",
    "learn": "dim",
    "note": "dim",
    "conntrack": "cyan",
    "nat": "cyan",
    "mirror": "magenta",
}


def render_tree(trace: Mapping[str, Any]) -> Tree:
    """A rich tree of `trace_packet`'s answer: the path, then the outcome (every text
    made printable: traces quote names, which must not drive the terminal)."""
    trace = printable_data(trace)
    root_node = trace.get("trace") or {"kind": "packet", "text": "packet", "children": []}
    tree = Tree(f"[bold]{_escape(root_node['text'])}[/]")
    for child in root_node.get("children", []):
        _add(tree, child)
    outcome = tree.add(f"[bold]result: {trace.get('verdict', '?')}[/]")
    if trace.get("drop_reason"):
        outcome.add(f"[red]{_escape(trace['drop_reason'])}[/]")
    if trace.get("limit"):
        outcome.add(f"[red]stopped by the simulation's {_escape(trace['limit'])} limit[/]")
    for out in trace.get("outputs", []):
        rewrites = [f"{k}={v}" for k, v in out.items() if k != "port_id"]
        extra = f" ({', '.join(rewrites)})" if rewrites else ""
        outcome.add(f"[green]output to port {out['port_id']}{extra}[/]")
    for copy in trace.get("mirrored", []):
        rewrites = [f"{k}={v}" for k, v in copy.items() if k not in ("port_id", "mirror_id")]
        extra = f", {', '.join(rewrites)}" if rewrites else ""
        outcome.add(
            f"[magenta]mirror copy to port {copy['port_id']} (mirror {copy['mirror_id']}{extra})[/]"
        )
    for pkt in trace.get("emitted", []):
        outcome.add(f"[magenta]emit {pkt['kind']} out of port {pkt['port_id']}[/]")
    for update in trace.get("state_updates", []):
        outcome.add(f"[dim]would learn {_describe_update(update)}[/]")
    for wait in trace.get("waits", []):
        outcome.add(f"[yellow]held until router {wait['router_id']} resolves {wait['ip_addr']}[/]")
    for entry in trace.get("flow_state", []):
        outcome.add(f"[dim]would create {_describe_flow_state(entry)}[/]")
    if trace.get("match"):
        fields = ", ".join(f"{k}={v}" for k, v in trace["match"].items())
        outcome.add(f"[dim]flow match: {_escape(fields)} (expiry {trace.get('expiry')})[/]")
    cost = trace.get("cost")
    if cost:
        outcome.add(
            f"[dim]cost: {cost.get('devices_visited', 0)} device visit(s), "
            f"{cost.get('rules_evaluated', 0)} rule(s) tested[/]"
        )
    return tree


def render_text(trace: Mapping[str, Any], width: int = 120) -> str:
    """The tree as plain text (no colours), for logs and tests."""
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    with console.capture() as capture:
        console.print(render_tree(trace))
    return capture.get()


def _add(parent: Tree, node: Mapping[str, Any]) -> None:
    style = _STYLE.get(node["kind"])
    text = _escape(node["text"])
    branch = parent.add(f"[{style}]{text}[/]" if style else text)
    for child in node.get("children", []):
        _add(branch, child)


def _describe_update(update: Mapping[str, Any]) -> str:
    if update.get("type") == "mac":
        return (
            f"MAC {update['mac_addr']} (vlan {update['vlan_id']}) on port {update['port_id']} "
            f"of bridge {update['bridge_id']}"
        )
    return f"ARP {update['ip_addr']} is at {update['mac_addr']} on router {update['router_id']}"


def _describe_flow_state(entry: Mapping[str, Any]) -> str:
    proto = {1: "icmp", 6: "tcp", 17: "udp"}.get(entry.get("proto", 0), str(entry.get("proto")))
    if entry.get("type") == "conntrack":
        return (
            f"conntrack entry {proto} {entry['src']}:{entry['sport']} > "
            f"{entry['dst']}:{entry['dport']} on {entry['device']}"
        )
    return (
        f"NAT binding {entry.get('kind')} {proto} {entry.get('src')}:{entry.get('sport')} > "
        f"{entry.get('dst')}:{entry.get('dport')} -> {entry.get('to_ip')}:{entry.get('to_port')}"
        f" on {entry.get('device')}"
    )


def _escape(text: str) -> str:
    return text.replace("[", "\\[")
