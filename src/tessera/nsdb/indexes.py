"""The NSDB's secondary indexes: which ports are bound to a host, which children a
parent has. Defined once here; both backends maintain them inside `commit`, in the same
atomic write as the objects they index, so an index never disagrees with the objects.

An index maps a key (a host id, a device id, ...) to the ids of the objects whose
indexed field holds that key (each element of a list field is a key of its own). An
agent watches the few keys it needs (`Nsdb.watch_index`) instead of whole kinds, so
what it pays for grows with what its ports reach, not with the cloud.

Data stored before a backend kept indexes has none: `Nsdb.repair_indexes` adds the
missing entries and drops stale ones. The ZooKeeper backend runs it, as it fills its id
registry, on the first connection to a namespace whose index root does not carry
`INDEX_FORMAT` (any client: the API server or an agent, so an upgraded agent never
watches an empty index); a memory store starts empty, hence indexed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tessera.model import (
    DhcpSubnet,
    LoadBalancer,
    Pool,
    PoolMember,
    Port,
    PortGroup,
    Route,
    StoredObject,
    Vip,
)

INDEX_FORMAT = b"indexes-1"
"""What a backend records once every object stored before the indexes is indexed."""


@dataclass(frozen=True)
class Index:
    name: str
    kind: str  # the kind of the indexed objects
    field: str  # the field whose value (each element, for a list) is the key

    def keys(self, obj: StoredObject) -> frozenset[str]:
        value = getattr(obj, self.field, None)
        if value is None or value == "":
            return frozenset()
        if isinstance(value, list | tuple | set | frozenset):
            return frozenset(str(v) for v in value if v)
        return frozenset({str(value)})


HOST_PORTS = Index("host_ports", Port.kind, "host_id")
DEVICE_PORTS = Index("device_ports", Port.kind, "device_id")
ROUTER_ROUTES = Index("router_routes", Route.kind, "router_id")
BRIDGE_DHCP = Index("bridge_dhcp", DhcpSubnet.kind, "bridge_id")
ROUTER_LBS = Index("router_lbs", LoadBalancer.kind, "router_id")
LB_POOLS = Index("lb_pools", Pool.kind, "load_balancer_id")
LB_VIPS = Index("lb_vips", Vip.kind, "load_balancer_id")
POOL_MEMBERS = Index("pool_members", PoolMember.kind, "pool_id")
PORT_GROUPS_OF = Index("port_groups_of", PortGroup.kind, "port_ids")

INDEXES: tuple[Index, ...] = (
    HOST_PORTS,
    DEVICE_PORTS,
    ROUTER_ROUTES,
    BRIDGE_DHCP,
    ROUTER_LBS,
    LB_POOLS,
    LB_VIPS,
    POOL_MEMBERS,
    PORT_GROUPS_OF,
)
BY_NAME = {i.name: i for i in INDEXES}
BY_KIND: dict[str, tuple[Index, ...]] = {}
for _index in INDEXES:
    BY_KIND[_index.kind] = (*BY_KIND.get(_index.kind, ()), _index)

IndexKey = tuple[str, str]  # (index name, key)
Entry = tuple[str, str, str]  # (index name, key, object id)


def index(name: str) -> Index:
    """The index called `name`; `KeyError` names the unknown one."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no NSDB index '{name}'") from None


def entries(obj: StoredObject | None) -> frozenset[IndexKey]:
    """The (index, key) pairs an object is listed under."""
    if obj is None:
        return frozenset()
    out: set[IndexKey] = set()
    for ix in BY_KIND.get(obj.kind, ()):
        out.update((ix.name, k) for k in ix.keys(obj))
    return frozenset(out)


def expected(objects: Iterable[StoredObject]) -> dict[IndexKey, set[str]]:
    """Every index's content for these objects (repairs and tests compare with it)."""
    out: dict[IndexKey, set[str]] = {}
    for obj in objects:
        for ik in entries(obj):
            out.setdefault(ik, set()).add(obj.id)
    return out
