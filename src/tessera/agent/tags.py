"""What each NSDB change touches, in flow tags.

A tag is a string: topology objects are tagged by their id (a UUID: unique across kinds),
learned state and host locations by the prefixed names `tessera.simulation.tags` builds
(the one home of tag naming). `tags_of_change` is the one place that says which tags an
NSDB change invalidates, so that an incremental update can be checked against a full
recompute (tests/unit/agent).
"""

from __future__ import annotations

from tessera.model import DhcpSubnet, Port, Route, Rule, StoredObject


def tags_of_change(old: StoredObject | None, new: StoredObject | None) -> set[str]:
    """Tags to invalidate when an object goes from `old` to `new` (None: absent).

    The object's own id always; plus its parent when the change alters the parent's
    behaviour beyond this object: a port joining or leaving a device (a bridge floods to
    all its ports), a route of a router (routing looks at every route), a rule of a chain,
    a DHCP subnet of a bridge.
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
    return tags
