"""The topology store: typed, transactional operations on the NSDB's topology objects.

Every operation is one NSDB `commit` whose version checks cover everything it read and
then wrote; a lost race (`Conflict`) re-runs the whole read-modify-write from fresh
reads, at most `MAX_ATTEMPTS` times, then gives up with `Conflict` (HTTP 409).

Integrity choices (each enforced inside the operation's own transaction):

- References are declared once, on the model classes (`Ref`), and enforced generically
  (`integrity.py`). A write naming an object that does not exist fails: 404 when it is
  the parent from the REST path (a port's device, a rule's chain...), 400 when it is a
  reference in the body (a filter, a next hop, a port of a rule...).
- A write that newly references an object also rewrites that object unchanged
  ("touch"), bumping its version. A mere existence check (`Check`) would let a
  concurrent delete that listed the referrers just before our commit leave a dangling
  reference; with the touch one of the two transactions fails and is retried. Watchers
  therefore see a "changed" event with an identical value on the touched object (a
  bridge gaining a port, a chain named as a filter): they must compare, not assume.
- Delete applies every referrer's `on_delete` recursively in the same transaction:
  `cascade` deletes it (a bridge's ports and DHCP subnets, a router's routes, routes
  via a deleted port, a chain's rules, rules jumping to a deleted chain or naming a
  deleted port group or IP address group); `nullify` clears the field (filters naming
  a deleted chain, the peer of a deleted port, the binding of a deleted host — its
  `interface_name` goes with `host_id`); `remove` drops the id from a list (port group
  members, a chain's `rule_ids`, a rule's `in_ports`/`out_ports`), and a rule whose
  port list empties is deleted, never widened to match every port. A deleted host also
  leaves its tunnel zones (a nested reference without a `Ref`).
- Server-owned fields (tunnel keys, links, bindings, member lists) are never taken
  from a client: ignored at create and update; links, bindings and members have their
  own operations. Fields fixed at creation (a port's addressing and VLAN, a DHCP
  subnet's prefix) may be sent back unchanged on update, a change is refused (400).
- Ids are unique across every kind (the NSDB refuses a create of a taken id, 409), and
  no reference is matched by id alone where it may name several kinds: a port's device
  is the bridge or router its `type` says, in checks, listings and cascades alike (data
  written before the rule may hold a bridge and a router with one id).
- Ports get a cluster-wide unique `tunnel_key` from the NSDB counter
  `port_tunnel_key`; a router port without `port_mac` gets 02:7e:55 + its tunnel key.
  A router port's MAC is unique in the cluster and its subnet overlaps no other port's
  of its router; a bridge's DHCP subnets do not overlap (409). A bridge has at most one
  port per `vlan_id`.
- A route's `next_hop_port` must be a port of its own router.
- A chain's `rule_ids` holds the rule order; a rule's `position` is derived from it on
  every read (stored as 0), so inserting a rule never rewrites its neighbours.
- A DHCP subnet's id is uuid5(bridge, prefix, length): a duplicate subnet collides on
  the id in the NSDB itself, even between two API servers racing.
- A link joins two ports of different devices, both unbound and unlinked; a binding
  needs an unlinked port and an interface name not yet bound on that host (binds on a
  host serialise on the host object). Re-binding a bound port moves it; unlinking an
  unlinked port is a no-op.
- Adding a member that is already there is a 409 and removing one that is not a 404.
- Load balancers (`load_balancers.py`): one per router; a VIP's pool is of the VIP's
  load balancer; members of a pool and VIPs of a load balancer differ in (address,
  port); a pool's `load_balancer_id` is fixed at creation. `status` of pools, members
  and health monitors is server-owned, written by `set_status`.
- Hosts are created only by `register_host` (agents); `Host.alive` is written by the
  cluster's liveness janitor from the ephemeral liveness table; a live host cannot be
  deleted.
"""

from tessera.nsdb.store.connections import Binding
from tessera.nsdb.store.objects import dhcp_subnet_id, parse_subnet_key
from tessera.nsdb.store.topology import TUNNEL_KEY_COUNTER, TopologyStore, normal_id
from tessera.nsdb.store.transaction import MAX_ATTEMPTS, Transaction

__all__ = [
    "MAX_ATTEMPTS",
    "TUNNEL_KEY_COUNTER",
    "Binding",
    "TopologyStore",
    "Transaction",
    "dhcp_subnet_id",
    "normal_id",
    "parse_subnet_key",
]
