"""What each NSDB change touches, in flow tags.

A tag is a string: topology objects are tagged by their id (a UUID: unique across kinds),
learned state and host locations by the prefixed names `tessera.simulation.tags` builds
(the one home of tag naming). `tags_of_change` is the one place that says which tags an
NSDB change invalidates, so that an incremental update can be checked against a full
recompute (tests/unit/agent).
"""

from __future__ import annotations

from tessera.model import (
    DhcpSubnet,
    LoadBalancer,
    PoolMember,
    Port,
    Route,
    Rule,
    StoredObject,
    Vip,
)
from tessera.packet.addr import ip_from_str
from tessera.simulation.tags import lb_member_tag


def tags_of_change(old: StoredObject | None, new: StoredObject | None) -> set[str]:
    """Tags to invalidate when an object goes from `old` to `new` (None: absent).

    The object's own id always; plus its parent when the change alters the parent's
    behaviour beyond this object: a port joining or leaving a device (a bridge floods to
    all its ports), a route of a router (routing looks at every route), a rule of a chain,
    a DHCP subnet of a bridge; a load balancer's router (every packet it routes may be
    for a VIP of it), a VIP's load balancer and pool (which of the router's packets are
    for a VIP, where they go), a member's pool (who may get new connections) and, when a
    member appears, goes or moves, its address (whose packets may be replies to
    translate back). Flows of a connection that already has its member read none of
    the pool's members: they keep it whatever the members become.
    """
    obj = new if new is not None else old
    if obj is None:
        return set()
    tags = {obj.id}
    if isinstance(obj, Port):
        if old is None or new is None:
            tags.add(obj.device_id)
        for p in (old, new):
            if isinstance(p, Port) and p.peer_id:
                tags.add(p.peer_id)
    elif isinstance(obj, Route):
        tags.add(obj.router_id)
        for r in (old, new):
            if isinstance(r, Route) and r.next_hop_port:
                tags.add(r.next_hop_port)
    elif isinstance(obj, Rule):
        tags.add(obj.chain_id)
    elif isinstance(obj, DhcpSubnet):
        tags.add(obj.bridge_id)
    elif isinstance(obj, LoadBalancer):
        for lb in (old, new):
            if isinstance(lb, LoadBalancer):
                tags.add(lb.router_id)
    elif isinstance(obj, Vip):
        for v in (old, new):
            if isinstance(v, Vip):
                tags |= {v.load_balancer_id, v.pool_id}
    elif isinstance(obj, PoolMember):
        addresses = {m.address for m in (old, new) if isinstance(m, PoolMember)}
        tags.add(obj.pool_id)
        if old is None or new is None or len(addresses) > 1:
            tags |= {lb_member_tag(ip_from_str(a)) for a in addresses}
    return tags
