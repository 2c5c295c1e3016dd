"""DHCP subnets of bridges (named `{prefix}_{len}`) and their static hosts."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import BridgeId, MacParam, Store, SubnetKey, build, oid, sent
from tessera.api.schemas import DhcpHostCreate, DhcpHostUpdate, DhcpSubnetCreate, DhcpSubnetUpdate
from tessera.model import DhcpHost, DhcpSubnet
from tessera.nsdb.errors import IntegrityError

router = APIRouter(tags=["dhcp"])


@router.get("/bridges/{bridge_id}/dhcp_subnets")
def list_dhcp_subnets(bridge_id: BridgeId, store: Store) -> list[DhcpSubnet]:
    return store.dhcp_subnets_of(oid("bridges", bridge_id))


@router.post("/bridges/{bridge_id}/dhcp_subnets", status_code=201)
def create_dhcp_subnet(bridge_id: BridgeId, body: DhcpSubnetCreate, store: Store) -> DhcpSubnet:
    """One subnet per prefix and length on a bridge (409 for a second one)."""
    return store.create(build(DhcpSubnet, body, bridge_id=oid("bridges", bridge_id)))


@router.get("/bridges/{bridge_id}/dhcp_subnets/{subnet}")
def get_dhcp_subnet(bridge_id: BridgeId, subnet: SubnetKey, store: Store) -> DhcpSubnet:
    return store.dhcp_subnet(oid("bridges", bridge_id), subnet)


@router.put("/bridges/{bridge_id}/dhcp_subnets/{subnet}")
def update_dhcp_subnet(
    bridge_id: BridgeId, subnet: SubnetKey, body: DhcpSubnetUpdate, store: Store
) -> DhcpSubnet:
    """`subnet_prefix`/`subnet_length` name the subnet and cannot change; `hosts` is
    managed through the hosts sub-resource."""
    return store.update_dhcp_subnet(oid("bridges", bridge_id), subnet, sent(body))


@router.delete("/bridges/{bridge_id}/dhcp_subnets/{subnet}", status_code=204)
def delete_dhcp_subnet(bridge_id: BridgeId, subnet: SubnetKey, store: Store) -> None:
    store.delete_dhcp_subnet(oid("bridges", bridge_id), subnet)


@router.get("/bridges/{bridge_id}/dhcp_subnets/{subnet}/hosts")
def list_dhcp_hosts(bridge_id: BridgeId, subnet: SubnetKey, store: Store) -> list[DhcpHost]:
    return store.dhcp_hosts(oid("bridges", bridge_id), subnet)


@router.post("/bridges/{bridge_id}/dhcp_subnets/{subnet}/hosts", status_code=201)
def create_dhcp_host(
    bridge_id: BridgeId, subnet: SubnetKey, body: DhcpHostCreate, store: Store
) -> DhcpHost:
    """A static lease: `ip_addr` must be in the subnet; MAC and address are unique."""
    host = DhcpHost.model_validate(body.model_dump())
    return store.add_dhcp_host(oid("bridges", bridge_id), subnet, host)


@router.get("/bridges/{bridge_id}/dhcp_subnets/{subnet}/hosts/{mac}")
def get_dhcp_host(bridge_id: BridgeId, subnet: SubnetKey, mac: MacParam, store: Store) -> DhcpHost:
    return store.dhcp_host(oid("bridges", bridge_id), subnet, mac)


@router.put("/bridges/{bridge_id}/dhcp_subnets/{subnet}/hosts/{mac}")
def update_dhcp_host(
    bridge_id: BridgeId, subnet: SubnetKey, mac: MacParam, body: DhcpHostUpdate, store: Store
) -> DhcpHost:
    bridge = oid("bridges", bridge_id)
    current = store.dhcp_host(bridge, subnet, mac)
    if body.mac_addr is not None and body.mac_addr != current.mac_addr:
        raise IntegrityError(
            f"mac_addr names the DHCP host and cannot change ({current.mac_addr}); "
            "delete it and add the new one"
        )
    fields = {**sent(body), "mac_addr": current.mac_addr}
    return store.replace_dhcp_host(bridge, subnet, mac, DhcpHost.model_validate(fields))


@router.delete("/bridges/{bridge_id}/dhcp_subnets/{subnet}/hosts/{mac}", status_code=204)
def delete_dhcp_host(bridge_id: BridgeId, subnet: SubnetKey, mac: MacParam, store: Store) -> None:
    store.remove_dhcp_host(oid("bridges", bridge_id), subnet, mac)
