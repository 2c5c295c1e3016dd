"""`TopologyStore`: the typed topology operations the API (and agents) use.

Each public method is one NSDB transaction run by `transaction.run`, i.e. retried from
fresh reads a bounded number of times when it loses a race; the kind-specific logic
lives in the sibling modules as plain functions over a `Transaction`.
"""

from __future__ import annotations

import builtins
import ipaddress
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tessera.model import (
    Bridge,
    Chain,
    DhcpHost,
    DhcpSubnet,
    HealthMonitor,
    Host,
    IpAddrGroup,
    Pool,
    PoolMember,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    StoredObject,
    TunnelZone,
    TunnelZoneHost,
)
from tessera.model.load_balancers import LbStatus
from tessera.nsdb import tables
from tessera.nsdb.base import Nsdb
from tessera.nsdb.codec import describe
from tessera.nsdb.errors import AlreadyExists, NotFound, NsdbError
from tessera.nsdb.indexes import DEVICE_PORTS
from tessera.nsdb.store import connections, members, objects
from tessera.nsdb.store.connections import Binding
from tessera.nsdb.store.integrity import cascade_delete, refuse_neutron_twin, replace
from tessera.nsdb.store.transaction import MAX_ATTEMPTS, Transaction, run

log = logging.getLogger(__name__)

T = TypeVar("T", bound=StoredObject)
R = TypeVar("R")

TUNNEL_KEY_COUNTER = "port_tunnel_key"


def normal_id(kind: str, id: str) -> str:
    """The canonical form of an object id from a URL; `NotFound` for what cannot be
    one (every id is a UUID), without asking the NSDB."""
    try:
        return str(uuid.UUID(id))
    except ValueError:
        raise NotFound(f"{describe(kind, id)} does not exist") from None


class TopologyStore:
    def __init__(self, nsdb: Nsdb, attempts: int = MAX_ATTEMPTS) -> None:
        self.nsdb = nsdb
        self._attempts = attempts

    def _run(self, what: str, body: Callable[[Transaction], R]) -> R:
        return run(self.nsdb, what, body, self._attempts)

    def _read(self, body: Callable[[Transaction], R]) -> R:
        return body(Transaction(self.nsdb))

    # -- objects ------------------------------------------------------------------------

    def get(self, cls: type[T], id: str) -> T:
        def body(tx: Transaction) -> T:
            obj = tx.get(cls, id)
            if isinstance(obj, Rule):
                chain = tx.find(Chain.kind, obj.chain_id)
                return objects.with_position(obj, chain if isinstance(chain, Chain) else None)  # type: ignore[return-value]
            return obj

        return self._read(body)

    def list(self, cls: type[T]) -> builtins.list[T]:
        def body(tx: Transaction) -> builtins.list[T]:
            found = tx.all_of(cls)
            if cls is Rule:
                chains = {c.id: c for c in tx.all_of(Chain)}
                found = [
                    objects.with_position(r, chains.get(r.chain_id))  # type: ignore[misc]
                    for r in found
                    if isinstance(r, Rule)
                ]
            return sorted(found, key=lambda o: o.id)

        return self._read(body)

    def create(self, obj: T, bind_to: Binding | None = None) -> T:
        """Write a new object (server-owned fields are reset, see `integrity`); a new
        port is bound as `bind_to` says in the same transaction."""
        tunnel_key = self.nsdb.next_id(TUNNEL_KEY_COUNTER) if isinstance(obj, Port) else 0
        what = f"creating {describe(obj.kind, obj.id)}"
        return self._run(what, lambda tx: objects.create(tx, obj, tunnel_key, bind_to))  # type: ignore[return-value]

    def update(self, cls: type[T], id: str, fields: Mapping[str, Any]) -> T:
        """PUT semantics, see `objects.update`."""
        what = f"updating {describe(cls.kind, id)}"
        return self._run(what, lambda tx: objects.update(tx, cls, id, fields))  # type: ignore[return-value]

    def delete(self, cls: type[StoredObject], id: str) -> None:
        """Delete with referential integrity (cascade / nullify / remove)."""
        if cls is Host:
            self.delete_host(id)
            return

        def body(tx: Transaction) -> StoredObject:
            obj = tx.get(cls, id)
            refuse_neutron_twin(tx, cls.kind, id)
            cascade_delete(tx, cls.kind, id)
            return obj

        gone = self._run(f"deleting {describe(cls.kind, id)}", body)
        if isinstance(gone, Port) and gone.type == "Bridge":
            self._forget_macs_on(gone.device_id, gone.id)
        elif isinstance(gone, Bridge):
            self._forget_macs_on(gone.id, None)

    def count(self, kind: str) -> int:
        return len(self.nsdb.list(kind))

    # -- children -------------------------------------------------------------------------

    def ports_of(
        self, device_cls: type[Bridge] | type[Router], device_id: str
    ) -> builtins.list[Port]:
        def body(tx: Transaction) -> builtins.list[Port]:
            tx.get(device_cls, device_id)
            kind = device_cls.__name__  # a port's `type` says which kind its device is
            found = (p for p in tx.indexed(Port, DEVICE_PORTS, device_id) if p.type == kind)
            return sorted(found, key=lambda p: p.id)

        return self._read(body)

    def routes_of(self, router_id: str) -> builtins.list[Route]:
        def body(tx: Transaction) -> builtins.list[Route]:
            tx.get(Router, router_id)
            return sorted(
                (r for r in tx.all_of(Route) if r.router_id == router_id), key=lambda r: r.id
            )

        return self._read(body)

    def rules_of(self, chain_id: str) -> builtins.list[Rule]:
        """The chain's rules in evaluation order, each with its position."""

        def body(tx: Transaction) -> builtins.list[Rule]:
            chain = tx.get(Chain, chain_id)
            out = []
            for rule_id in chain.rule_ids:
                rule = tx.find(Rule.kind, rule_id)
                if isinstance(rule, Rule):
                    out.append(objects.with_position(rule, chain))
            return out

        return self._read(body)

    def dhcp_subnets_of(self, bridge_id: str) -> builtins.list[DhcpSubnet]:
        def body(tx: Transaction) -> builtins.list[DhcpSubnet]:
            tx.get(Bridge, bridge_id)
            subnets = [s for s in tx.all_of(DhcpSubnet) if s.bridge_id == bridge_id]
            return sorted(subnets, key=lambda s: (s.network.network_address, s.subnet_length))

        return self._read(body)

    def dhcp_subnet(self, bridge_id: str, key: str) -> DhcpSubnet:
        return self._read(lambda tx: members.subnet(tx, bridge_id, key))

    def update_dhcp_subnet(self, bridge_id: str, key: str, fields: Mapping[str, Any]) -> DhcpSubnet:
        def body(tx: Transaction) -> DhcpSubnet:
            subnet = members.subnet(tx, bridge_id, key)
            return objects.update(tx, DhcpSubnet, subnet.id, fields)  # type: ignore[return-value]

        return self._run(f"updating DHCP subnet {key}", body)

    def delete_dhcp_subnet(self, bridge_id: str, key: str) -> None:
        def body(tx: Transaction) -> None:
            subnet = members.subnet(tx, bridge_id, key)
            refuse_neutron_twin(tx, DhcpSubnet.kind, subnet.id)
            cascade_delete(tx, DhcpSubnet.kind, subnet.id)

        self._run(f"deleting DHCP subnet {key}", body)

    # -- links and bindings ----------------------------------------------------------------

    def link(self, port_id: str, peer_id: str) -> Port:
        return self._run(
            f"linking port {port_id}", lambda tx: connections.link(tx, port_id, peer_id)
        )

    def unlink(self, port_id: str) -> Port:
        return self._run(f"unlinking port {port_id}", lambda tx: connections.unlink(tx, port_id))

    def bind(self, host_id: str, port_id: str, interface_name: str) -> Binding:
        return self._run(
            f"binding port {port_id}",
            lambda tx: connections.bind(tx, host_id, port_id, interface_name),
        )

    def unbind(self, host_id: str, port_id: str) -> None:
        """Also forgets the MACs learned on the port (see `_forget_macs_on`)."""

        def body(tx: Transaction) -> StoredObject | None:
            port = tx.find(Port.kind, port_id)
            connections.unbind(tx, host_id, port_id)
            return port

        port = self._run(f"unbinding port {port_id}", body)
        if isinstance(port, Port) and port.type == "Bridge":
            self._forget_macs_on(port.device_id, port.id)

    def bindings(self, host_id: str) -> builtins.list[Binding]:
        return self._read(lambda tx: connections.bindings(tx, host_id))

    # -- members ----------------------------------------------------------------------------

    def port_group_ports(self, group_id: str) -> builtins.list[str]:
        return list(self.get(PortGroup, group_id).port_ids)

    def add_port_group_port(self, group_id: str, port_id: str) -> None:
        self._run(
            f"adding port {port_id} to port group {group_id}",
            lambda tx: members.add_port(tx, group_id, port_id),
        )

    def remove_port_group_port(self, group_id: str, port_id: str) -> None:
        self._run(
            f"removing port {port_id} from port group {group_id}",
            lambda tx: members.remove_port(tx, group_id, port_id),
        )

    def ip_addr_group_addrs(self, group_id: str) -> builtins.list[str]:
        return list(self.get(IpAddrGroup, group_id).addrs)

    def add_ip_addr(self, group_id: str, addr: str) -> str:
        return self._run(
            f"adding {addr} to IP address group {group_id}",
            lambda tx: members.add_addr(tx, group_id, addr),
        )

    def remove_ip_addr(self, group_id: str, addr: str) -> None:
        self._run(
            f"removing {addr} from IP address group {group_id}",
            lambda tx: members.remove_addr(tx, group_id, addr),
        )

    def tunnel_zone_hosts(self, zone_id: str) -> builtins.list[TunnelZoneHost]:
        return list(self.get(TunnelZone, zone_id).hosts)

    def add_tunnel_zone_host(self, zone_id: str, member: TunnelZoneHost) -> TunnelZoneHost:
        self._run(
            f"adding host {member.host_id} to tunnel zone {zone_id}",
            lambda tx: members.add_zone_host(tx, zone_id, member),
        )
        return member

    def remove_tunnel_zone_host(self, zone_id: str, host_id: str) -> None:
        self._run(
            f"removing host {host_id} from tunnel zone {zone_id}",
            lambda tx: members.remove_zone_host(tx, zone_id, host_id),
        )

    def dhcp_hosts(self, bridge_id: str, key: str) -> builtins.list[DhcpHost]:
        return list(self.dhcp_subnet(bridge_id, key).hosts)

    def dhcp_host(self, bridge_id: str, key: str, mac: str) -> DhcpHost:
        return self._read(lambda tx: members.dhcp_host(tx, bridge_id, key, mac))

    def add_dhcp_host(self, bridge_id: str, key: str, host: DhcpHost) -> DhcpHost:
        return self._run(
            f"adding DHCP host {host.mac_addr}",
            lambda tx: members.put_dhcp_host(tx, bridge_id, key, host),
        )

    def replace_dhcp_host(self, bridge_id: str, key: str, mac: str, host: DhcpHost) -> DhcpHost:
        return self._run(
            f"updating DHCP host {mac}",
            lambda tx: members.put_dhcp_host(tx, bridge_id, key, host, replacing=mac),
        )

    def remove_dhcp_host(self, bridge_id: str, key: str, mac: str) -> None:
        self._run(
            f"removing DHCP host {mac}",
            lambda tx: members.remove_dhcp_host(tx, bridge_id, key, mac),
        )

    # -- hosts --------------------------------------------------------------------------------

    def register_host(self, host_id: str, name: str, addresses: builtins.list[str]) -> Host:
        """An agent announces its host: the liveness entry (ephemeral: it lives exactly as
        long as this client's session) first, then the Host object, marked alive."""
        host_id = normal_id(Host.kind, host_id)
        entry = tables.LivenessEntry(name=name, since=time.time())
        self.nsdb.state_set(tables.HOST_LIVENESS, host_id, entry.encode(), ephemeral=True)

        def body(tx: Transaction) -> Host:
            old = tx.find(Host.kind, host_id)
            if old is None:
                host = Host(id=host_id, name=name, addresses=addresses, alive=True)
                tx.create(host)
                return host
            new = replace(old, name=name, addresses=addresses, alive=True)
            if new != old:  # a restart changes nothing: no write, no event for every agent
                tx.put(new)
            return new  # type: ignore[return-value]

        try:
            return self._run(f"registering host {host_id}", body)
        except AlreadyExists:  # another registration created it first: now it is an update
            return self._run(f"registering host {host_id}", body)

    def unregister_host(self, host_id: str) -> None:
        """An agent stopping cleanly: not alive any more (without waiting for its
        session to end)."""
        self.nsdb.state_delete(tables.HOST_LIVENESS, host_id)
        self.set_host_alive(host_id, False)

    def live_hosts(self) -> set[str]:
        return set(self.nsdb.state_get(tables.HOST_LIVENESS))

    def set_host_alive(self, host_id: str, alive: bool) -> bool:
        """Write `Host.alive`; False when the host does not exist or already says so."""

        def body(tx: Transaction) -> bool:
            host = tx.find(Host.kind, host_id)
            if not isinstance(host, Host) or host.alive == alive:
                return False
            tx.put(host.model_copy(update={"alive": alive}))
            return True

        return self._run(f"marking host {host_id} {'alive' if alive else 'dead'}", body)

    def delete_host(self, host_id: str) -> None:
        """Forget a host whose agent is gone: its ports are unbound, it leaves its
        tunnel zones. A live host is refused (its agent would only re-register it)."""
        if host_id in self.live_hosts():
            raise AlreadyExists(f"host {host_id} is alive (its agent is running); stop it first")

        def body(tx: Transaction) -> None:
            tx.get(Host, host_id)
            cascade_delete(tx, Host.kind, host_id)

        self._run(f"deleting host {host_id}", body)

    # -- load balancer status ---------------------------------------------------------------

    def set_status(
        self, cls: type[Pool] | type[PoolMember] | type[HealthMonitor], id: str, status: LbStatus
    ) -> bool:
        """Write the server-owned `status` of a pool, pool member or health monitor (the
        health-monitor service marking a member down or up); False when the object does
        not exist (any more) or already says so. Nothing else of the object changes: a
        concurrent update by a client is kept, the loser of the race re-runs."""

        def body(tx: Transaction) -> bool:
            obj = tx.find(cls.kind, id)
            if not isinstance(obj, cls) or obj.status == status:
                return False
            tx.put(obj.model_copy(update={"status": status}))
            return True

        return self._run(f"marking {describe(cls.kind, id)} {status}", body)

    def children(
        self, parent: type[StoredObject], parent_id: str, cls: type[T], field: str
    ) -> builtins.list[T]:
        """The objects of `cls` whose `field` names `parent_id` (a load balancer's pools,
        a pool's members...), by id; `NotFound` when the parent does not exist."""

        def body(tx: Transaction) -> builtins.list[T]:
            tx.get(parent, parent_id)
            found = (o for o in tx.all_of(cls) if getattr(o, field) == parent_id)
            return sorted(found, key=lambda o: o.id)

        return self._read(body)

    # -- state tables ---------------------------------------------------------------------------

    def mac_table(self, bridge_id: str) -> builtins.list[tables.MacEntry]:
        self.get(Bridge, bridge_id)
        entries = []
        for key, value in self.nsdb.state_get(tables.mac_table(bridge_id)).items():
            try:
                entries.append(tables.decode_mac(key, value))
            except ValueError as exc:
                log.warning(
                    "ignoring a malformed MAC table entry %r of bridge %s: %s", key, bridge_id, exc
                )
        return sorted(entries, key=lambda e: (e.vlan_id, e.mac_addr))

    def _forget_macs_on(self, bridge_id: str, port_id: str | None) -> None:
        """Remove the MAC entries that send traffic to a port that is gone or unbound
        (every entry of the bridge when `port_id` is None), whichever agent's session
        wrote them. Left in place, an entry keeps every host's flows unicasting to
        nowhere: the MAC is never flooded again, so the port that owns it now is never
        learned (a VM re-created elsewhere with the same MAC stays unreachable). Their
        removal invalidates those flows on every host. Best effort: the change itself
        is done; an entry left behind still vanishes with its writer's session."""
        table = tables.mac_table(bridge_id)
        try:
            for key, value in self.nsdb.state_get(table).items():
                try:
                    entry = tables.decode_mac(key, value)
                except ValueError:
                    continue
                if port_id is None or str(entry.port_id) == port_id:
                    self.nsdb.state_delete(table, key)
        except NsdbError as exc:
            log.warning("MAC entries of port %s stay in bridge %s: %s", port_id, bridge_id, exc)

    def learn_mac(self, bridge_id: str, entry: tables.MacEntry) -> None:
        key, value = tables.encode_mac(entry)
        self.nsdb.state_set(tables.mac_table(bridge_id), key, value, ephemeral=True)

    def forget_mac(self, bridge_id: str, vlan_id: int, mac_addr: str) -> None:
        self.nsdb.state_delete(tables.mac_table(bridge_id), tables.mac_key(vlan_id, mac_addr))

    def arp_table(self, router_id: str) -> builtins.list[tables.ArpEntry]:
        self.get(Router, router_id)
        entries = []
        for key, value in self.nsdb.state_get(tables.arp_table(router_id)).items():
            try:
                entries.append(tables.decode_arp(key, value))
            except (ValueError, KeyError) as exc:
                log.warning(
                    "ignoring a malformed ARP entry %r of router %s: %s", key, router_id, exc
                )
        return sorted(entries, key=lambda e: ipaddress.IPv4Address(e.ip_addr))

    def put_arp(self, router_id: str, entry: tables.ArpEntry) -> None:
        key, value = tables.encode_arp(entry)
        self.nsdb.state_set(tables.arp_table(router_id), key, value, ephemeral=True)

    def forget_arp(self, router_id: str, ip_addr: str) -> None:
        self.nsdb.state_delete(tables.arp_table(router_id), ip_addr)
