"""What load balancer objects add to the generic reference checks, inside the write's
transaction: one load balancer per router, a VIP's pool in the VIP's own load
balancer, unique (address, port) pairs among a pool's members and a load balancer's
VIPs, and the per-parent counts of `model/limits.py`.

Each check touches the parent (the router, the pool, the load balancer; `check_refs`
has made sure it exists) before reading the siblings: two racing writes under one
parent, creates or updates, then fail each other's version check and the loser
re-runs against the winner's object, so the rules hold between API servers too.
"""

from __future__ import annotations

from tessera.model import LoadBalancer, Pool, PoolMember, Router, StoredObject, Vip
from tessera.model.limits import MAX_LB_VIPS, MAX_POOL_MEMBERS
from tessera.nsdb.errors import AlreadyExists, IntegrityError
from tessera.nsdb.store.transaction import Transaction


def check(tx: Transaction, obj: StoredObject) -> None:
    """The load balancer rules for a new or updated `obj` (a no-op for other kinds)."""
    if isinstance(obj, LoadBalancer):
        tx.touch(Router.kind, obj.router_id)
        _one_per_router(tx, obj)
    elif isinstance(obj, PoolMember):
        tx.touch(Pool.kind, obj.pool_id)
        _member_unique(tx, obj)
    elif isinstance(obj, Vip):
        tx.touch(LoadBalancer.kind, obj.load_balancer_id)
        _vip_pool_of_its_load_balancer(tx, obj)
        _vip_unique(tx, obj)


def _one_per_router(tx: Transaction, lb: LoadBalancer) -> None:
    for other in tx.all_of(LoadBalancer):
        if other.id != lb.id and other.router_id == lb.router_id:
            raise AlreadyExists(
                f"router {lb.router_id} already has load balancer {other.id}; a router "
                "has at most one load balancer (add pools and VIPs to it)"
            )


def _member_unique(tx: Transaction, member: PoolMember) -> None:
    count = 0
    for other in tx.all_of(PoolMember):
        if other.id == member.id or other.pool_id != member.pool_id:
            continue
        count += 1
        if (other.address, other.protocol_port) == (member.address, member.protocol_port):
            raise AlreadyExists(
                f"pool {member.pool_id} already has member {other.id} at "
                f"{member.address}:{member.protocol_port}"
            )
    if count >= MAX_POOL_MEMBERS:
        raise IntegrityError(
            f"pool {member.pool_id} already has {count} member{'s' if count != 1 else ''}, "
            "the most a pool may have"
        )


def _vip_pool_of_its_load_balancer(tx: Transaction, vip: Vip) -> None:
    pool = tx.find(Pool.kind, vip.pool_id)
    if isinstance(pool, Pool) and pool.load_balancer_id != vip.load_balancer_id:
        raise IntegrityError(
            f"pool_id: pool {pool.id} belongs to load balancer {pool.load_balancer_id}, "
            f"not to the VIP's load balancer {vip.load_balancer_id}"
        )


def _vip_unique(tx: Transaction, vip: Vip) -> None:
    count = 0
    for other in tx.all_of(Vip):
        if other.id == vip.id or other.load_balancer_id != vip.load_balancer_id:
            continue
        count += 1
        if (other.address, other.protocol_port) == (vip.address, vip.protocol_port):
            raise AlreadyExists(
                f"load balancer {vip.load_balancer_id} already has VIP {other.id} at "
                f"{vip.address}:{vip.protocol_port}"
            )
    if count >= MAX_LB_VIPS:
        raise IntegrityError(
            f"load balancer {vip.load_balancer_id} already has {count} "
            f"VIP{'s' if count != 1 else ''}, the most a load balancer may have"
        )
