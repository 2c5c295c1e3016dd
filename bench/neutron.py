"""The Neutron benchmark: a 3-tier tenant made with the `openstack` CLI, against the same
tenant made through tessera's v1 REST API, and the first ping between two of its VMs.

    sudo .venv/bin/python bench/neutron.py [--json | --markdown] [--ports N] [--neutron-first]
    .venv/bin/python bench/neutron.py --from-json run.json [--markdown]

One run, one lab (``tessera lab up --hosts 2 --name nb<run id>``, taken down at the end
even on failure or Ctrl-C), which serves both APIs over one ZooKeeper NSDB. In it, two
tenants with the same shape, each timed from its first request to its last answer:

- **Neutron** (``openstack --os-auth-type none --os-endpoint <lab Neutron URL>``, one
  process per command, as an operator would type them): networks web, app and db with a
  subnet each, a router with an interface on each subnet and its gateway on an external
  network, security groups web, app and db with rules (ICMP and TCP 80/443 to web, TCP
  8080 to app from web's group, TCP 5432 to db from app's group), and ``--ports`` ports
  (30) spread over the three networks, each with a fixed IP and its tier's group.
- **v1** (tessera's REST API through one HTTP client, what a program would do): three
  bridges with a DHCP subnet each, a router with a port linked to each bridge and the
  routes to them, an uplink port on an external bridge with a default route and the
  SNAT/reverse-SNAT pair, one filter chain per tier (return flows, ICMP, the tier's TCP
  ports from the same sources, then drop) and the same ports, each with that chain as
  its outbound filter and a static DHCP lease for its fixed IP.

Then, for each tenant, **first ping**: from the end of its build, two VMs on two of its
ports (tiers web and app, hosts h1 and h2: across hosts and through the router) are
added with ``tessera lab vm add --dhcp`` (each returns once its agent serves the port
and the VM has a lease), and the first of them pings the second (one ping a second, at
most ``PING_TRIES``) until a reply comes; the time to that reply is the figure.

The external network of each tenant (203.0.113.0/24, inside the lab's namespaces only)
is made before the clock starts: it is the operator's, not the tenant's. So is a
warm-up, a small v1 tenant of its own (10.9.x) and its first ping: the first VMs of a
fresh lab pay for its agents' first DHCP, routing and filtering work, which neither
measured tenant should (without it, whichever came first took 1 to 3 s more). Beside the
build, **one read** (`openstack network list` against `GET /api/v1/bridges`, median of
3) shows what a command costs before it does any work. Nothing is asserted; every
figure is measured in this run, and the ratio is Neutron / v1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import BENCH_ERRORS, BenchError, Row, machine, render, render_markdown, signals_raise
from dp_agent import agent_available

BIN = Path(sys.executable).parent
TESSERA = str(BIN / "tessera")
OPENSTACK = str(BIN / "openstack")
TIERS = ("web", "app", "db")
#: Tier -> its /24 (10.1.1.0/24 ...): the VMs are web's first port and app's first port.
NETS = {tier: f"10.1.{n}" for n, tier in enumerate(TIERS, start=1)}
EXTERNAL = "203.0.113"
PING_TRIES = 30
COMMAND_TIMEOUT = 120.0


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (the lab makes namespaces): run it with sudo")
    for tool in ("ip", "tc", "nsenter"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed")
    for exe in (TESSERA, OPENSTACK):
        if not Path(exe).exists():
            raise BenchError(f"{exe} is missing (pip install -e '.[test]')")
    why = agent_available()
    if why is not None:
        raise BenchError(f"tessera agents cannot run here: {why}")


def _env() -> dict[str, str]:
    """No OS_* cloud settings, no TESSERA_* of the caller's shell, no user config."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OS_", "TESSERA_")) and not k.lower().endswith("_proxy")
    }
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _run(argv: list[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=_env(), check=False
    )
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:6])} ...: exit {done.returncode}: {done.stderr[-500:]}")
    return done


# --- the lab ------------------------------------------------------------------------------


@dataclass
class BenchLab:
    name: str
    api: str = ""
    neutron: str = ""

    def tessera(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """`tessera lab SUB [ACTION] --name LAB ARGS...` (options before positionals)."""
        sub, *rest = args
        if sub == "vm":
            argv = [TESSERA, "lab", "vm", rest[0], "--name", self.name, *rest[1:]]
        else:
            argv = [TESSERA, "lab", sub, "--name", self.name, *rest]
        return _run(argv, timeout).stdout

    def ping_once(self, vm: str, address: str) -> bool:
        argv = [TESSERA, "lab", "exec", "--name", self.name, vm, "--"]
        argv += ["ping", "-n", "-c", "1", "-W", "1", address]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, env=_env(), check=False
        )
        return done.returncode == 0


@contextmanager
def lab_up(name: str) -> Iterator[BenchLab]:
    lab = BenchLab(name)
    try:
        out = _run([TESSERA, "lab", "up", "--hosts", "2", "--name", name], timeout=300).stdout
        for line in out.splitlines():
            said = line.partition(": ")[2]
            if said.startswith("Neutron "):
                lab.neutron = said.split()[1]
            if line.startswith("TESSERA_API="):
                lab.api = line.removeprefix("TESSERA_API=")
        if not lab.api or not lab.neutron:
            raise BenchError(f"lab up printed no API or Neutron URL:\n{out[-800:]}")
        yield lab
    finally:
        subprocess.run(
            [TESSERA, "lab", "down", "--name", name],
            capture_output=True,
            timeout=180,
            env=_env(),
            check=False,
        )


# --- the two tenants ------------------------------------------------------------------------


@dataclass
class Tenant:
    """What a build leaves for the ping: the VMs' ports (and MACs for v1), the address
    pinged, and how many commands or requests the build took."""

    vm_ports: dict[str, str] = field(default_factory=dict)  # host -> port id
    vm_macs: dict[str, str] = field(default_factory=dict)  # host -> MAC (v1 only)
    target: str = ""
    calls: int = 0


def _port_plan(ports: int) -> list[tuple[str, int]]:
    """(tier, index) of each port, round robin over the tiers."""
    return [(TIERS[n % len(TIERS)], n // len(TIERS)) for n in range(ports)]


def _address(tier: str, index: int, nets: dict[str, str] = NETS) -> str:
    return f"{nets[tier]}.{10 + index}"


class OpenStack:
    """The `openstack` CLI against the lab's Neutron endpoint, one process a command."""

    def __init__(self, url: str, home: Path) -> None:
        self.url, self.home, self.calls = url, home, 0

    def __call__(self, *args: str) -> Any:
        wants_json = not {"delete", "add", "remove", "set", "unset"} & set(args[:4])
        argv = [OPENSTACK, "--os-auth-type", "none", "--os-endpoint", self.url, *args]
        argv += ["-f", "json"] if wants_json else []
        env = {**_env(), "HOME": str(self.home)}
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=env, check=False
        )
        self.calls += 1
        if done.returncode != 0:
            raise BenchError(f"openstack {' '.join(args)}: {done.stderr.strip()[-500:]}")
        return json.loads(done.stdout) if done.stdout.strip() else None


def neutron_external(os_: OpenStack) -> None:
    os_("network", "create", "ext", "--external")
    os_("subnet", "create", "ext-s", "--network", "ext", "--subnet-range", f"{EXTERNAL}.0/24")


def neutron_tenant(os_: OpenStack, ports: int) -> Tenant:
    tenant = Tenant()
    for tier in TIERS:
        os_("network", "create", tier)
        os_("subnet", "create", f"{tier}-s", "--network", tier,
            "--subnet-range", f"{NETS[tier]}.0/24")  # fmt: skip
    os_("router", "create", "r")
    os_("router", "set", "r", "--external-gateway", "ext")
    for tier in TIERS:
        os_("router", "add", "subnet", "r", f"{tier}-s")
    for tier in TIERS:
        os_("security", "group", "create", tier)
    rules = [
        ("web", "icmp", None, None),
        ("web", "tcp", "80", None),
        ("web", "tcp", "443", None),
        ("app", "icmp", None, None),
        ("app", "tcp", "8080", "web"),
        ("db", "icmp", None, None),
        ("db", "tcp", "5432", "app"),
    ]
    for group, proto, port, remote in rules:
        argv = ["security", "group", "rule", "create", group, "--ingress", "--protocol", proto]
        argv += ["--dst-port", port] if port else []
        argv += ["--remote-group", remote] if remote else []
        os_(*argv)
    hosts = {("web", 0): "h1", ("app", 0): "h2"}
    for tier, index in _port_plan(ports):
        argv = ["port", "create", f"{tier}-p{index}", "--network", tier,
                "--security-group", tier,
                "--fixed-ip", f"subnet={tier}-s,ip-address={_address(tier, index)}"]  # fmt: skip
        host = hosts.get((tier, index))
        argv += ["--host", host] if host else []
        made = os_(*argv)
        if host:
            tenant.vm_ports[host] = made["id"]
    tenant.target, tenant.calls = _address("app", 0), os_.calls
    return tenant


class V1:
    """tessera's REST API through one HTTP client; counts the requests."""

    def __init__(self, api: str) -> None:
        self.client = httpx.Client(base_url=api.rstrip("/") + "/", timeout=30.0)
        self.calls = 0

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.client.request(method, path.lstrip("/"), json=body)
        self.calls += 1
        if response.status_code >= 300:
            raise BenchError(f"{method} {path}: {response.status_code} {response.text[-300:]}")
        return response.json() if response.content else None

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        created: dict[str, Any] = self("POST", path, body or {})
        return created


def v1_external(v1: V1) -> str:
    """The external bridge (the operator's); its id."""
    bridge: str = v1.post("bridges", {"name": "ext-v1"})["id"]
    return bridge


def _link_router(v1: V1, router: str, bridge: str, address: str, length: int) -> str:
    """A router port with `address`/`length` linked to a new port of `bridge`; its id."""
    network = address.rsplit(".", 1)[0] + ".0"
    rport = v1.post(
        f"routers/{router}/ports",
        {"port_address": address, "network_address": network, "network_length": length},
    )["id"]
    bport = v1.post(f"bridges/{bridge}/ports")["id"]
    v1.post(f"ports/{bport}/link", {"peer_id": rport})
    v1.post(
        f"routers/{router}/routes",
        {"dst_network_addr": network, "dst_network_length": length, "next_hop_port": rport},
    )
    return str(rport)


def v1_tenant(
    v1: V1, external_bridge: str, ports: int, nets: dict[str, str] = NETS, uplink_ip: int = 2
) -> Tenant:
    """The tenant through v1; `nets` (tier -> /24) and the uplink's address (in the
    external /24) let the warm-up make a second one beside it."""
    tenant = Tenant()
    bridges = {}
    for tier in TIERS:
        bridges[tier] = v1.post("bridges", {"name": f"{tier}-{nets[tier]}"})["id"]
        v1.post(
            f"bridges/{bridges[tier]}/dhcp_subnets",
            {
                "subnet_prefix": f"{nets[tier]}.0",
                "subnet_length": 24,
                "default_gateway": f"{nets[tier]}.1",
                "server_addr": f"{nets[tier]}.2",
            },
        )
    inbound = v1.post("chains", {"name": "r-v1-in"})["id"]
    outbound = v1.post("chains", {"name": "r-v1-out"})["id"]
    router = v1.post(
        "routers", {"name": "r-v1", "inbound_filter_id": inbound, "outbound_filter_id": outbound}
    )["id"]
    for tier in TIERS:
        _link_router(v1, router, bridges[tier], f"{nets[tier]}.1", 24)
    gw_ip = f"{EXTERNAL}.{uplink_ip}"
    uplink = _link_router(v1, router, external_bridge, gw_ip, 24)
    v1.post(
        f"routers/{router}/routes",
        {
            "dst_network_addr": "0.0.0.0",
            "dst_network_length": 0,
            "next_hop_port": uplink,
            "next_hop_gateway": f"{EXTERNAL}.1",
        },
    )
    target = {"address_from": gw_ip, "address_to": gw_ip, "port_from": 1024, "port_to": 65535}
    v1.post(
        f"chains/{outbound}/rules",
        {"type": "snat", "out_ports": [uplink], "nat_targets": [target], "flow_action": "accept"},
    )
    v1.post(
        f"chains/{inbound}/rules",
        {"type": "rev_snat", "in_ports": [uplink], "nw_dst_address": gw_ip, "nw_dst_length": 32},
    )
    # One chain per tier: the traffic towards its VMs (their ports' outbound filter).
    allowed: dict[str, list[tuple[int, str | None]]] = {
        "web": [(80, None), (443, None)],
        "app": [(8080, "web")],
        "db": [(5432, "app")],
    }
    chains = {}
    for tier in TIERS:
        chain = chains[tier] = v1.post("chains", {"name": f"sg-{tier}-v1"})["id"]
        v1.post(f"chains/{chain}/rules", {"type": "accept", "match_return_flow": True})
        v1.post(f"chains/{chain}/rules", {"type": "accept", "dl_type": 0x0800, "nw_proto": 1})
        for dport, source in allowed[tier]:
            rule: dict[str, Any] = {
                "type": "accept",
                "dl_type": 0x0800,
                "nw_proto": 6,
                "tp_dst": {"start": dport, "end": dport},
            }
            if source:
                rule |= {"nw_src_address": f"{nets[source]}.0", "nw_src_length": 24}
            v1.post(f"chains/{chain}/rules", rule)
        v1.post(f"chains/{chain}/rules", {"type": "drop", "dl_type": 0x0800})
    for n, (tier, index) in enumerate(_port_plan(ports)):
        port = v1.post(f"bridges/{bridges[tier]}/ports", {"outbound_filter_id": chains[tier]})
        mac = f"02:7e:{int(nets[tier].split('.')[1]):02x}:00:{n >> 8:02x}:{n & 255:02x}"
        v1.post(
            f"bridges/{bridges[tier]}/dhcp_subnets/{nets[tier]}.0_24/hosts",
            {"mac_addr": mac, "ip_addr": _address(tier, index, nets)},
        )
        host = {("web", 0): "h1", ("app", 0): "h2"}.get((tier, index))
        if host:
            tenant.vm_ports[host], tenant.vm_macs[host] = port["id"], mac
    tenant.target, tenant.calls = _address("app", 0, nets), v1.calls
    return tenant


# --- measuring ------------------------------------------------------------------------------


def timed(build: Callable[[], Tenant]) -> tuple[float, Tenant]:
    start = time.monotonic()
    tenant = build()
    return time.monotonic() - start, tenant


@dataclass
class PingTiming:
    vms_up: float  # both `vm add --dhcp` done
    reply: float  # from then to the first reply
    tries: int

    @property
    def total(self) -> float:
        return self.vms_up + self.reply


def first_ping(lab: BenchLab, tenant: Tenant, tag: str) -> PingTiming:
    """From now: two new VMs on the tenant's ports (h1, h2) up, then the first ping
    reply from h1's to h2's; the VMs are removed afterwards."""
    vms = {host: f"{tag}-{host}" for host in tenant.vm_ports}
    start = time.monotonic()
    try:
        for host, port in tenant.vm_ports.items():
            argv = ["vm", "add", vms[host], "--host", host, "--port", port, "--dhcp"]
            if host in tenant.vm_macs:
                argv += ["--mac", tenant.vm_macs[host]]
            lab.tessera(*argv)
        up = time.monotonic()
        for attempt in range(1, PING_TRIES + 1):
            sent = time.monotonic()
            if lab.ping_once(vms["h1"], tenant.target):
                return PingTiming(up - start, time.monotonic() - up, attempt)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - sent)))
        raise BenchError(f"{vms['h1']} got no ping reply from {tenant.target} in {PING_TRIES} s")
    finally:
        for vm in vms.values():
            subprocess.run(
                [TESSERA, "lab", "vm", "del", "--name", lab.name, vm],
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                env=_env(),
                check=False,
            )


#: The warm-up tenant's networks, beside the measured ones.
WARM_NETS = {tier: f"10.9.{n}" for n, tier in enumerate(TIERS, start=1)}


def warm_up(lab: BenchLab, v1: V1, bridge: str) -> None:
    """A small v1 tenant of its own (routed, DHCP, filters) and its first ping, untimed:
    the first VMs of a fresh lab pay for the agents' first DHCP, routing and filtering
    work (measured: 1 to 3 s more, for whichever tenant came first)."""
    warm = v1_tenant(v1, bridge, len(TIERS) * 2, WARM_NETS, uplink_ip=3)
    first_ping(lab, warm, "wu")


def one_command(os_: OpenStack, v1: V1, rounds: int = 3) -> tuple[float, float]:
    """Median seconds of one read, `openstack network list` and `GET bridges`: what a
    command costs before it does anything (a process, its imports, a discovery)."""
    cli, rest = [], []
    for _ in range(rounds):
        cli.append(timed_call(lambda: os_("network", "list")))
        rest.append(timed_call(lambda: v1("GET", "bridges")))
    return sorted(rest)[rounds // 2], sorted(cli)[rounds // 2]


def timed_call(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def measure(ports: int, workdir: Path, neutron_first: bool = False) -> list[Row]:
    name = f"nb{secrets.token_hex(3)}"
    with lab_up(name) as lab:
        os_ = OpenStack(lab.neutron, workdir)
        neutron_external(os_)
        v1 = V1(lab.api)
        ext_bridge = v1_external(v1)
        warm_up(lab, v1, ext_bridge)
        rest_read, cli_read = one_command(os_, v1)
        os_.calls = v1.calls = 0
        if neutron_first:
            os_seconds, os_made = timed(lambda: neutron_tenant(os_, ports))
            os_ping = first_ping(lab, os_made, "os")
        v1_seconds, v1_made = timed(lambda: v1_tenant(v1, ext_bridge, ports))
        v1_ping = first_ping(lab, v1_made, "v1")
        if not neutron_first:
            os_seconds, os_made = timed(lambda: neutron_tenant(os_, ports))
            os_ping = first_ping(lab, os_made, "os")
        v1.client.close()
    what = f"3 networks, router with gateway, 3 groups and 7 rules, {ports} ports"

    def row(metric: str, v1_value: float, os_value: float, note: str) -> Row:
        return Row("neutron", metric, "v1 REST", round(v1_value, 3), round(os_value, 3), "s",
                   note=note)  # fmt: skip

    return [
        row("3-tier tenant build", v1_seconds, os_seconds,
            f"{what}: {os_made.calls} openstack commands vs {v1_made.calls} v1 requests"),
        row("one read (network list / GET bridges)", rest_read, cli_read,
            "median of 3: the cost of one command before it does anything"),
        row("first ping after the build", v1_ping.total, os_ping.total,
            f"2 VMs added (--dhcp), h1 -> h2 through the router; reply at ping "
            f"{os_ping.tries} (Neutron) / {v1_ping.tries} (v1)"),
        row("  of which: 2 VMs up (vm add --dhcp)", v1_ping.vms_up, os_ping.vms_up,
            "each returns once its agent serves the port and the VM has its lease"),
        row("  of which: first reply", v1_ping.reply, os_ping.reply, "1 ping a second"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the rows as JSON")
    out.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--ports", type=int, default=30, help="ports of the tenant (30)")
    parser.add_argument(
        "--neutron-first",
        action="store_true",
        help="the Neutron tenant first (v1 first by default)",
    )
    parser.add_argument("--from-json", type=Path, help="render a saved --json run")
    args = parser.parse_args(argv)
    try:
        if args.from_json:
            saved = json.loads(args.from_json.read_text())
            rows = [Row.from_dict(d) for d in saved["rows"]]
            info = saved.get("machine", {})
        else:
            if not 2 <= args.ports <= 200:
                raise BenchError("--ports must be 2..200")
            preflight()
            with signals_raise():
                workdir = Path(f"/tmp/tessera-bench-neutron-{os.getpid()}")
                workdir.mkdir(exist_ok=True)
                try:
                    rows = measure(args.ports, workdir, args.neutron_first)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
            info = machine()
    except BENCH_ERRORS as error:
        print(f"bench/neutron.py: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"machine": info, "rows": [r.as_dict() for r in rows]}, indent=2))
    elif args.markdown:
        print(render_markdown(rows))
    else:
        print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
