"""The few netlink operations the datapaths and the agent need, through pyroute2.

Everything acts on the caller's network namespace (the agent runs inside its host's
namespace) and is idempotent: an agent restart finds its devices in place and keeps
them, since tearing a device down would cut the traffic it carries.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tessera.datapath.base import DatapathError


@contextlib.contextmanager
def _ipr() -> Iterator[IPRoute]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def ifindex(ifname: str) -> int | None:
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def link_kind(ifname: str) -> str | None:
    """'veth', 'vxlan', ... or None for a device without link info (or absent)."""
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


def set_up(ifname: str) -> None:
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise DatapathError(f"no interface {ifname} in this network namespace")
        ipr.link("set", index=found[0], state="up")


def disable_ipv6(ifname: str) -> None:
    """Keep the host's own IPv6 chatter (RS, MLD) off datapath-internal devices."""
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")


def ensure_veth(name: str, peer: str) -> None:
    """A veth pair `name`/`peer`, both up (created if `name` is absent)."""
    with _ipr() as ipr:
        if not ipr.link_lookup(ifname=name):
            try:
                ipr.link("add", ifname=name, kind="veth", peer=peer)
            except NetlinkError as exc:
                raise DatapathError(f"cannot create veth {name}/{peer}: {exc.args[1]}") from None
    for dev in (name, peer):
        disable_ipv6(dev)
        set_up(dev)


def interface_of_address(address: str) -> str | None:
    """The interface holding IPv4 `address` in this namespace."""
    with _ipr() as ipr:
        for a in ipr.get_addr(family=2):
            if a.get("IFA_ADDRESS") == address:
                links = ipr.get_links(a["index"])
                return str(links[0].get("IFLA_IFNAME")) if links else None
    return None


def global_ipv4_addresses() -> list[tuple[str, str]]:
    """(address, interface) of every global-scope IPv4 address in this namespace."""
    out: list[tuple[str, str]] = []
    with _ipr() as ipr:
        names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=2):
            address = a.get("IFA_ADDRESS")
            if address and not ipaddress.IPv4Address(address).is_loopback:
                out.append((str(address), str(names.get(a["index"], ""))))
    return out


def ensure_vxlan(name: str, underlay_ifname: str, port: int = 4789) -> bool:
    """A VXLAN device in external (collect_md) mode on the underlay interface, up.

    Returns True when it had to be created. An existing device of that name is kept
    as it is if it is a VXLAN device; anything else there is an error.
    """
    created = False
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            kind = link_kind(name)
            if kind != "vxlan":
                raise DatapathError(f"interface {name} exists and is not a VXLAN device ({kind})")
        else:
            under = ipr.link_lookup(ifname=underlay_ifname)
            if not under:
                raise DatapathError(f"no underlay interface {underlay_ifname}")
            try:
                ipr.link(
                    "add",
                    ifname=name,
                    kind="vxlan",
                    vxlan_collect_metadata=1,
                    vxlan_port=port,
                    vxlan_link=under[0],
                    vxlan_learning=0,
                )
            except NetlinkError as exc:
                raise DatapathError(f"cannot create VXLAN device {name}: {exc.args[1]}") from None
            created = True
    disable_ipv6(name)
    set_up(name)
    return created


def delete(name: str, kind: str) -> bool:
    """Delete device `name` if it is of `kind` ('veth' takes its peer along); False when
    there is no such device. A device of another kind is not ours: left, with an error."""
    found = link_kind(name)
    if found is None and ifindex(name) is None:
        return False
    if found != kind:
        raise DatapathError(f"interface {name} is not a {kind} device ({found}): left as it is")
    with _ipr() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code == 19:  # ENODEV: gone meanwhile
                return False
            raise DatapathError(f"cannot delete {name}: {exc.args[1]}") from None
    return True
