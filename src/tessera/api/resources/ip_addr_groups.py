"""IP address groups: sets of addresses matched by rules."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import AddrParam, IpAddrGroupId, Store, build, oid, sent
from tessera.api.schemas import (
    IpAddrGroupAddr,
    IpAddrGroupCreate,
    IpAddrGroupUpdate,
    IpAddrRequest,
)
from tessera.model import IpAddrGroup

router = APIRouter(tags=["IP address groups"])


@router.get("/ip_addr_groups")
def list_ip_addr_groups(store: Store) -> list[IpAddrGroup]:
    return store.list(IpAddrGroup)


@router.post("/ip_addr_groups", status_code=201)
def create_ip_addr_group(body: IpAddrGroupCreate, store: Store) -> IpAddrGroup:
    return store.create(build(IpAddrGroup, body))


@router.get("/ip_addr_groups/{ip_addr_group_id}")
def get_ip_addr_group(ip_addr_group_id: IpAddrGroupId, store: Store) -> IpAddrGroup:
    return store.get(IpAddrGroup, oid("ip_addr_groups", ip_addr_group_id))


@router.put("/ip_addr_groups/{ip_addr_group_id}")
def update_ip_addr_group(
    ip_addr_group_id: IpAddrGroupId, body: IpAddrGroupUpdate, store: Store
) -> IpAddrGroup:
    """`addrs` is read-only: add and remove addresses through `/ip_addrs`."""
    return store.update(IpAddrGroup, oid("ip_addr_groups", ip_addr_group_id), sent(body))


@router.delete("/ip_addr_groups/{ip_addr_group_id}", status_code=204)
def delete_ip_addr_group(ip_addr_group_id: IpAddrGroupId, store: Store) -> None:
    """Also deletes the rules that match on this group."""
    store.delete(IpAddrGroup, oid("ip_addr_groups", ip_addr_group_id))


@router.get("/ip_addr_groups/{ip_addr_group_id}/ip_addrs")
def list_ip_addr_group_addrs(
    ip_addr_group_id: IpAddrGroupId, store: Store
) -> list[IpAddrGroupAddr]:
    group = oid("ip_addr_groups", ip_addr_group_id)
    return [
        IpAddrGroupAddr(ip_addr_group_id=group, addr=a) for a in store.ip_addr_group_addrs(group)
    ]


@router.post("/ip_addr_groups/{ip_addr_group_id}/ip_addrs", status_code=201)
def add_ip_addr_group_addr(
    ip_addr_group_id: IpAddrGroupId, body: IpAddrRequest, store: Store
) -> IpAddrGroupAddr:
    group = oid("ip_addr_groups", ip_addr_group_id)
    return IpAddrGroupAddr(ip_addr_group_id=group, addr=store.add_ip_addr(group, body.addr))


@router.delete("/ip_addr_groups/{ip_addr_group_id}/ip_addrs/{addr}", status_code=204)
def remove_ip_addr_group_addr(
    ip_addr_group_id: IpAddrGroupId, addr: AddrParam, store: Store
) -> None:
    store.remove_ip_addr(oid("ip_addr_groups", ip_addr_group_id), addr)
