"""Host-side preparation before the agent runs: the underlay, the VXLAN device, the
datapath backend. Everything acts on the agent's own network namespace (the lab starts
each agent inside its host namespace with `nsenter --net`)."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from tessera.datapath import links
from tessera.datapath.afpacket import interface_mtu
from tessera.datapath.base import Datapath, DatapathError

log = logging.getLogger(__name__)

VXLAN_DEVICE = "vxlan0"
BENCHMARK_NET = ipaddress.IPv4Network("198.18.0.0/15")
DATAPATHS = ("ebpf", "userspace")


class SetupError(Exception):
    """The host cannot run the agent as asked (message for humans)."""


def choose_underlay(given: str | None) -> tuple[str | None, str | None]:
    """(address, interface) of the underlay: the given address, else the only global
    IPv4 address of this namespace (one in 198.18.0.0/15 preferred). (None, None) when
    there is none: the host then has no tunnels."""
    addresses = links.global_ipv4_addresses()
    if given is not None:
        try:
            ipaddress.IPv4Address(given)
        except ValueError:
            raise SetupError(f"--underlay-ip '{given}' is not an IPv4 address") from None
        for address, ifname in addresses:
            if address == given:
                return given, ifname
        raise SetupError(f"no interface of this host has the underlay address {given}")
    if not addresses:
        return None, None
    if len(addresses) == 1:
        return addresses[0]
    bench = [a for a in addresses if ipaddress.IPv4Address(a[0]) in BENCHMARK_NET]
    if len(bench) == 1:
        return bench[0]
    listed = ", ".join(a for a, _ in addresses)
    raise SetupError(f"several addresses could be the underlay ({listed}): pass --underlay-ip")


def make_datapath(
    kind: str,
    host_id: str,
    state_dir: Path,
    underlay_ip: str | None,
    underlay_if: str | None,
    ct_entries: int | None = None,
) -> Datapath:
    """`ct_entries`: the connection table's size (None: the eBPF datapath keeps its
    pinned table's, the userspace one starts with the default)."""
    mtu = 1600
    if underlay_if is not None:
        try:
            mtu = interface_mtu(underlay_if)
        except OSError:
            pass
        if mtu < 1550:
            log.warning(
                "underlay %s has MTU %d: VM packets of 1500 bytes will not fit a VXLAN "
                "tunnel (use 1600 on the underlay or MTU 1450 in VMs)", underlay_if, mtu,
            )  # fmt: skip
    if kind == "userspace":
        from tessera.datapath.userspace import UserspaceDatapath

        dp = UserspaceDatapath(underlay_ip, underlay_mtu=mtu)
        if ct_entries is not None:
            dp.conntrack.max_entries = ct_entries
        return dp
    if kind != "ebpf":
        raise SetupError(f"unknown datapath '{kind}' (use {' or '.join(DATAPATHS)})")
    from tessera.datapath.ebpf_backend import DEFAULT_PIN_ROOT, EbpfDatapath

    vxlan: str | None = None
    if underlay_if is not None:
        try:
            if links.ensure_vxlan(VXLAN_DEVICE, underlay_if):
                log.info("created %s on %s", VXLAN_DEVICE, underlay_if)
        except DatapathError as exc:
            raise SetupError(str(exc)) from None
        vxlan = VXLAN_DEVICE
    return EbpfDatapath(
        DEFAULT_PIN_ROOT / host_id,
        cache_dir=state_dir / "bpf",
        vxlan_ifname=vxlan,
        underlay_mtu=mtu,
        ct_entries=ct_entries,
    )


def cleanup_host(host_id: str) -> list[str]:
    """`tessera agent --cleanup`: refuse while an agent of `host_id` runs on this machine
    (it would lose its datapath under it), else remove its datapath and its stale
    control files. Lines for the operator."""
    from tessera.agent.control import agents_dir, list_endpoints

    for endpoint in list_endpoints():
        if endpoint.host_id == host_id:
            raise SetupError(
                f"the agent of host {host_id} is running (pid {endpoint.pid}): stop it first"
            )
    removed = cleanup(host_id)
    for suffix in (".sock", ".json"):
        path = agents_dir() / f"{host_id}{suffix}"
        if path.exists():
            path.unlink(missing_ok=True)
            removed.append(f"control file {path}")
    if not removed:
        return [f"host {host_id}: no datapath to remove"]
    return [f"host {host_id}: removed {what}" for what in removed]


def cleanup(host_id: str) -> list[str]:
    """Remove what the agent of `host_id` made on this host for its datapath (filters,
    pins, `vxlan0`, the miss veth), whichever datapath it ran: the userspace one makes
    none of these, so there is then nothing to find. The caller makes sure no agent of
    this host runs. Returns what was removed."""
    from tessera.datapath.ebpf.loader import LoadError
    from tessera.datapath.ebpf_backend import DEFAULT_PIN_ROOT, remove_datapath

    try:
        return remove_datapath(DEFAULT_PIN_ROOT / host_id, VXLAN_DEVICE)
    except (DatapathError, LoadError, OSError) as exc:
        raise SetupError(f"cleanup of host {host_id}: {exc}") from None
