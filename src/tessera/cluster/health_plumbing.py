"""The health monitor's probe ports: where its probes enter the virtual network.

Members live behind a virtual router, in address space only that router's topology
reaches; the node running the monitor must not get routes into it. So, as MidoNet did,
each router with a monitored pool gets a *probe port*, and the node probes from a
namespace of its own cabled to that port:

    router R: probe port 169.254.17.45/30 (route 169.254.17.44/30 → it)
        bound on host H to  hm/hnXXXXXXXXXX (a veth end, in the namespace H's agent runs in)
    namespace PREFIX+R:     hm0 169.254.17.46/30, default route via 169.254.17.45

A probe leaves `hm0`, enters R through the probe port (H's agent simulates it like any
exterior port) and is routed to the member; the reply comes back to the probe port on
the route above. The port and route have ids derived from the router's (`probe_port_id`,
`probe_route_id`), so any node finds them; every router uses the same link-local /30,
one namespace per router keeps them apart. The node leading the service binds the port
to its own host: a new leader re-binds it. The namespace and veth are this node's: it
removes them when it stops leading, and any it finds from an earlier run (killed) when it
starts leading again.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.cluster.health_probe import ping
from tessera.datapath.ebpf.netns import run_in_netns
from tessera.model import Port, Route
from tessera.nsdb.errors import AlreadyExists, NotFound
from tessera.nsdb.store import TopologyStore

NETWORK = "169.254.17.44"
LENGTH = 30
ROUTER_ADDRESS = "169.254.17.45"  # the probe port's
PROBE_ADDRESS = "169.254.17.46"  # hm0's, inside the probe namespace
INNER_IFNAME = "hm0"
NETNS_DIR = Path("/run/netns")
COMMAND_TIMEOUT = 15.0
PATH_CHECK_TIMEOUT = 1.0
_IDS = uuid.UUID("0b5d7c1a-3e2f-5a61-9c4d-68656c74686d")


class PlumbingError(Exception):
    """A probe port cannot be made now (a missing namespace or host...); one line."""


def probe_port_id(router_id: str) -> str:
    return str(uuid.uuid5(_IDS, f"probe-port/{router_id}"))


def probe_route_id(router_id: str) -> str:
    return str(uuid.uuid5(_IDS, f"probe-route/{router_id}"))


def is_probe_port(port: Port) -> bool:
    return port.id == probe_port_id(port.device_id)


@dataclass(frozen=True)
class ProbeSite:
    """Where this node probes from: the host whose agent serves its probe ports, the
    namespace that agent runs in (None: this node's own), the prefix of the probe
    namespaces it makes (unique per node on one machine: it removes what it finds with
    it), and the node's name (part of the veth's name)."""

    host_id: str
    host_netns: str | None
    netns_prefix: str
    node: str

    def namespace(self, router_id: str) -> str:
        return self.netns_prefix + router_id.replace("-", "")[:12]

    def host_ifnames(self, router_id: str) -> tuple[str, str]:
        """The two names the veth end bound to the probe port takes in turn: per node
        and router, so that a stale one of another node (killed while leading) never
        clashes with it; a veth made anew takes the name the port is *not* bound to, so
        that the binding changes and the agent attaches the new interface (it would not
        notice one remade under the same name)."""
        digest = hashlib.sha1(f"{self.node}/{router_id}".encode()).hexdigest()[:10]
        return "hm" + digest, "hn" + digest


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PlumbingError(f"'{' '.join(argv)}': {exc}") from None
    if check and proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        raise PlumbingError(
            f"'{' '.join(argv)}' failed: {reason[-1] if reason else proc.returncode}"
        )
    return proc


def _ip(netns: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *(["-n", netns] if netns else []), *args], check=check)


def _link_exists(netns: str | None, ifname: str) -> bool:
    return _ip(netns, "link", "show", "dev", ifname, check=False).returncode == 0


def namespace_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _no_ipv6(name: str) -> None:
    """Probes are IPv4; router solicitations would only be noise for the agent."""

    def write() -> None:
        for scope in ("all", "default"):
            Path(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6").write_text("1")

    with contextlib.suppress(OSError):
        run_in_netns(NETNS_DIR / name, write)


class ProbePlumbing:
    """Makes and removes probe ports (NSDB) and probe namespaces (kernel)."""

    def __init__(self, store: TopologyStore, site: ProbeSite) -> None:
        self.store = store
        self.site = site

    # -- NSDB ----------------------------------------------------------------------------

    def ensure_port(self, router_id: str) -> Port:
        """The router's probe port and its route (made if missing)."""
        port_id = probe_port_id(router_id)
        try:
            port = self.store.get(Port, port_id)
        except NotFound:
            fresh = Port(
                id=port_id,
                device_id=router_id,
                type="Router",
                port_address=ROUTER_ADDRESS,
                network_address=NETWORK,
                network_length=LENGTH,
            )
            try:
                port = self.store.create(fresh)
            except AlreadyExists:  # made meanwhile (a previous leader's last act)
                port = self.store.get(Port, port_id)
        route_id = probe_route_id(router_id)
        try:
            self.store.get(Route, route_id)
        except NotFound:
            route = Route(
                id=route_id,
                router_id=router_id,
                dst_network_addr=NETWORK,
                dst_network_length=LENGTH,
                next_hop_port=port_id,
            )
            with contextlib.suppress(AlreadyExists):
                self.store.create(route)
        return port

    def bound_here(self, router_id: str) -> str | None:
        """The interface the probe port is bound to, if it is one of this node's."""
        try:
            port = self.store.get(Port, probe_port_id(router_id))
        except NotFound:
            return None
        ours = self.site.host_ifnames(router_id)
        if port.host_id == self.site.host_id and port.interface_name in ours:
            return port.interface_name
        return None

    def bind(self, router_id: str, ifname: str) -> None:
        """Bind the probe port to this node's veth end (moving it from another host)."""
        port_id = probe_port_id(router_id)
        try:
            self.store.bind(self.site.host_id, port_id, ifname)
        except NotFound as exc:
            raise PlumbingError(f"cannot bind probe port {port_id}: {exc}") from None

    def unbind(self, router_id: str) -> None:
        """Unbind the probe port if it is still bound to this node's veth end."""
        if self.bound_here(router_id) is not None:
            with contextlib.suppress(NotFound):
                self.store.unbind(self.site.host_id, probe_port_id(router_id))

    def delete_port(self, router_id: str) -> None:
        """The probe port goes (its route with it)."""
        with contextlib.suppress(NotFound):
            self.store.delete(Port, probe_port_id(router_id))

    # -- kernel --------------------------------------------------------------------------

    def ensure_namespace(self, router_id: str, bound: str | None) -> tuple[str | None, str]:
        """The probe namespace of `router_id`, cabled into the agent's namespace and
        addressed; returns its name (None: probe from where this process is, for a
        subclass that needs no namespace) and the cable's outer end, to bind. `bound`
        is the outer end the port is bound to now (None: not to this node's). Idempotent;
        a cable made anew (the namespace removed, or the agent's remade) gets the other
        of the two names."""
        ns, host_ns = self.site.namespace(router_id), self.site.host_netns
        names = self.site.host_ifnames(router_id)
        if host_ns is not None and not namespace_exists(host_ns):
            raise PlumbingError(f"the agent's namespace {host_ns} does not exist (yet)")
        if not namespace_exists(ns):
            _run(["ip", "netns", "add", ns])
            _no_ipv6(ns)
        _ip(ns, "link", "set", "lo", "up")
        present = [n for n in names if _link_exists(host_ns, n)]
        if _link_exists(ns, INNER_IFNAME) and present:
            outer = present[0]
        else:
            for stale in present:
                _ip(host_ns, "link", "delete", stale)
            _ip(ns, "link", "delete", INNER_IFNAME, check=False)
            outer = names[1] if bound == names[0] else names[0]
            _ip(host_ns, "link", "add", outer, "type", "veth",
                "peer", "name", INNER_IFNAME, "netns", ns)  # fmt: skip
        _ip(ns, "addr", "replace", f"{PROBE_ADDRESS}/{LENGTH}", "dev", INNER_IFNAME)
        _ip(ns, "link", "set", INNER_IFNAME, "up")
        _ip(ns, "route", "replace", "default", "via", ROUTER_ADDRESS, "dev", INNER_IFNAME)
        _ip(host_ns, "link", "set", outer, "up")
        return ns, outer

    def remove_namespace(self, router_id: str) -> None:
        """The probe namespace goes, and the veth pair with it."""
        remove_namespace(self.site.namespace(router_id))

    def remove_leftovers(self) -> None:
        """Every probe namespace of this node (its prefix): what a run killed while
        leading left, or what a term that ends leaves."""
        try:
            found = sorted(p.name for p in NETNS_DIR.iterdir())
        except OSError:
            return
        for name in found:
            if name.startswith(self.site.netns_prefix):
                with contextlib.suppress(PlumbingError):
                    remove_namespace(name)

    def path_works(self) -> bool:
        """Whether the router answers a ping on the probe port (called on the probing
        thread, inside the probe namespace): when it does not, a failed probe says
        nothing about the member."""
        try:
            return ping(ROUTER_ADDRESS, PATH_CHECK_TIMEOUT)
        except OSError:
            return False


def remove_namespace(name: str) -> None:
    if namespace_exists(name):
        _run(["ip", "netns", "delete", name])
