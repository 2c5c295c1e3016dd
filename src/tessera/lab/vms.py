"""Lab VMs: a namespace with one `eth0`, cabled by a veth to its host and bound there.

    tsr-L-NAME: eth0 (MAC, MTU, address, default route)  <-veth->  tsr-L-hK: vm-NAME
                                                                   bound to the VM's port

`vm add` returns once the host's agent serves the port (so the first ping of a script
already meets a working datapath) and, with `--dhcp`, once the VM holds a lease. With
`--schedule` the host is the one placement chooses (lab.placement): the VM is made
there once the allocation is claimed, and a VM that cannot be made gives it back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Any

from tessera.agent.control import agents_dir, request
from tessera.client.errors import UserError
from tessera.lab import api, dhcp, hosts, names, netns, procs
from tessera.lab import placement as lab_placement
from tessera.lab.errors import LabError
from tessera.lab.state import HostState, LabState, VmState

DEFAULT_VCPUS = 1  # `vm add --schedule` without --vcpus / --ram
DEFAULT_RAM_MB = 512
SERVE_TIMEOUT = 15.0  # the agent notices a binding through an NSDB watch: milliseconds
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


def check_options(
    ip: str | None, gw: str | None, mac: str | None, dhcp_: bool, mtu: int | None
) -> tuple[str | None, str | None, str | None]:
    """Normalised (ip, gw, mac); a LabError names the first bad value."""
    if ip is not None and dhcp_:
        raise LabError("--ip and --dhcp exclude each other")
    if gw is not None and ip is None:
        raise LabError("--gw needs --ip (with --dhcp the gateway comes from the lease)")
    if ip is not None:
        try:
            iface = ipaddress.IPv4Interface(ip)
        except ValueError:
            raise LabError(f"--ip '{ip}' is not ADDR/LEN (e.g. 10.0.1.10/24)") from None
        if "/" not in ip:
            raise LabError(f"--ip '{ip}' needs a prefix length (e.g. {ip}/24)")
        ip = iface.with_prefixlen
    if gw is not None:
        try:
            gw = str(ipaddress.IPv4Address(gw))
        except ValueError:
            raise LabError(f"--gw '{gw}' is not an IPv4 address") from None
    if mac is not None:
        if not _MAC_RE.match(mac.lower()):
            raise LabError(f"--mac '{mac}' is not a MAC address (e.g. 02:00:00:00:00:01)")
        mac = mac.lower().replace("-", ":")
        if int(mac[:2], 16) & 1:
            raise LabError(f"--mac '{mac}' is a multicast address")
    if mtu is not None and not 68 <= mtu <= 65535:
        raise LabError(f"--mtu {mtu} is outside 68..65535")
    return ip, gw, mac


@dataclass(frozen=True)
class Schedule:
    """`vm add --schedule`: what placement is asked for (VCPU, MEMORY_MB)."""

    vcpus: int = DEFAULT_VCPUS
    ram_mb: int = DEFAULT_RAM_MB


def check_placement(state: LabState, host: str | None, schedule: Schedule | None) -> None:
    """A VM runs on the host it names, or on the one placement chooses: one of them."""
    if schedule is None:
        if host is None:
            raise LabError(
                "name the VM's host with --host hK, or let placement choose one with --schedule"
            )
        return
    if host is not None:
        raise LabError("--schedule and --host exclude each other: placement chooses the host")
    lab_placement.check_request(state, schedule.vcpus, schedule.ram_mb)


def add(
    state: LabState,
    name: str,
    host: str | None,
    port_id: str,
    *,
    mac: str | None = None,
    ip: str | None = None,
    gw: str | None = None,
    use_dhcp: bool = False,
    mtu: int | None = None,
    offload: bool = True,
    schedule: Schedule | None = None,
) -> tuple[VmState, list[str]]:
    """Make the VM on `host`, or (`schedule`) on the host placement chooses; returns it
    and notes for the user (agent stopped, lease summary)."""
    names.check_vm_name(name)
    if name in state.vms:
        other = state.vms[name]
        raise LabError(
            f"VM {name} already exists (on {other.host}, port {other.port_id}); "
            f"`tessera lab vm del {name}` first"
        )
    check_placement(state, host, schedule)
    if host is not None:
        state.host(host)
    ip, gw, mac = check_options(ip, gw, mac, use_dhcp, mtu)
    notes: list[str] = []
    with api.client(state) as client:
        api.port(client, port_id)
        if mac is None:
            # A Neutron port's fixed IP goes by DHCP to its MAC only: take it.
            mac = api.neutron_port_mac(state, port_id)
        consumer = None
        if schedule is not None:
            chosen, consumer, _taken = lab_placement.schedule(
                state, schedule.vcpus, schedule.ram_mb
            )
            host = chosen.name
        assert host is not None
        vm: VmState | None = None
        try:
            host_state = state.host(host)
            vm = VmState(
                name=name, host=host, port_id=port_id, mac=mac, ip=ip, gw=gw,
                dhcp=use_dhcp, mtu=mtu, offload=offload, consumer=consumer,
                vcpus=schedule.vcpus if schedule else None,
                ram_mb=schedule.ram_mb if schedule else None,
            )  # fmt: skip
            state.vms[name] = vm
            state.save()  # before making anything: `down` must find a half-made VM
            plumb(state, vm)
            api.bind(client, host_state.host_id, port_id, names.vm_link(name))
        except BaseException:
            if vm is not None:
                _remove(state, vm)
            if consumer is not None:  # nothing is left of the VM: nor of its claim
                lab_placement.free_quietly(state, consumer)
            raise
    if hosts.agent_pid(state, host_state) is None:
        notes.append(f"the agent of {host} is stopped: the port is served once it starts")
    else:
        wait_served(state, host_state, port_id)
    if use_dhcp:
        script = dhcp.write_script(state.dir)
        notes.append("DHCP: " + dhcp.run_client(state.netns(name), names.VM_IFNAME, script, name))
    return vm, notes


def plumb(state: LabState, vm: VmState) -> None:
    """Make (or repair) the VM's namespace, cable and static addressing."""
    ns, host_ns, link = state.netns(vm.name), state.netns(vm.host), names.vm_link(vm.name)
    eth = names.VM_IFNAME
    netns.add(ns)
    if not netns.link_exists(ns, eth):
        if netns.link_exists(host_ns, link):
            netns.ip(host_ns, "link", "delete", link)
        netns.ip(host_ns, "link", "add", link, "type", "veth", "peer", "name", eth, "netns", ns)
    if vm.mac:
        netns.ip(ns, "link", "set", eth, "address", vm.mac)
    if vm.mtu:
        netns.ip(host_ns, "link", "set", link, "mtu", str(vm.mtu))
        netns.ip(ns, "link", "set", eth, "mtu", str(vm.mtu))
    netns.ip(host_ns, "link", "set", link, "up")
    netns.ip(ns, "link", "set", eth, "up")
    if not vm.offload:
        # A datapath that cannot finish CHECKSUM_PARTIAL packets would pass ping and
        # break TCP; both of tessera's can, so this is only a switch for experiments.
        netns.run([*netns.nsenter(ns), "ethtool", "-K", eth, "tx", "off"])
    if vm.ip:
        if vm.ip not in netns.ipv4_addresses(ns, eth):
            netns.ip(ns, "addr", "replace", vm.ip, "dev", eth)
        if vm.gw:
            netns.ip(ns, "route", "replace", "default", "via", vm.gw, "dev", eth)


def wait_served(state: LabState, host: HostState, port_id: str) -> None:
    """Until the host's agent reports the port attached to its datapath."""
    sock = agents_dir() / f"{host.host_id}.sock"
    deadline = time.monotonic() + SERVE_TIMEOUT
    last = "the agent's control socket is not there yet"
    while time.monotonic() < deadline:
        try:
            status: Any = request(sock, "status", timeout=2.0)
            if port_id in (status.get("ports") or {}):
                return
            last = "the port is not attached yet"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.05)
    log = state.log_file(hosts.agent_process(host))
    raise LabError(
        f"the agent of {host.name} did not attach port {port_id} within {SERVE_TIMEOUT:g}s "
        f"({last}); the VM stays in place; see {log}"
    )


def delete(state: LabState, name: str) -> tuple[bool, list[str]]:
    """Unbind the VM's port (if still bound to it), remove the VM and free its
    placement allocation (a scheduled VM); True if the port was unbound, and notes for
    the user. An allocation placement cannot free now does not keep the VM: a note says
    how to free it later."""
    vm = state.vms.get(name)
    if vm is None:
        known = ", ".join(sorted(state.vms)) or "none"
        raise LabError(f"lab {state.name} has no VM '{name}' (VMs: {known})")
    host = state.host(vm.host)
    with api.client(state) as client:
        unbound = api.unbind_if_ours(client, host.host_id, vm.port_id, names.vm_link(name))
    _remove(state, vm)
    notes = []
    if vm.consumer is not None:
        try:
            freed = lab_placement.free(state, vm.consumer)
            notes.append(
                f"its allocation on {vm.host} (consumer {vm.consumer}) freed"
                if freed
                else f"it had no allocation left (consumer {vm.consumer})"
            )
        except UserError as exc:
            notes.append(
                f"its allocation (consumer {vm.consumer}) is not freed: {exc.message}; "
                f"`tessera place free {vm.consumer}` frees it"
            )
    return unbound, notes


def _remove(state: LabState, vm: VmState) -> None:
    ns = state.netns(vm.name)
    kill_inside([ns])
    netns.delete(ns)  # the veth pair goes with it
    state.vms.pop(vm.name, None)
    state.save()


def kill_inside(namespaces: list[str]) -> None:
    """End every process living in `namespaces` (what `exec` or DHCP left running)."""
    for pid in netns.pids_inside(namespaces):
        with contextlib.suppress(OSError):
            procs.terminate(pid, timeout=3.0)


def describe(state: LabState, vm: VmState) -> dict[str, Any]:
    """The VM as `status` shows it: what was asked, and what its eth0 has now."""
    ns = state.netns(vm.name)
    mac, mtu = netns.link_info(ns, names.VM_IFNAME) if netns.exists(ns) else (None, None)
    return {
        "name": vm.name,
        "host": vm.host,
        "port": vm.port_id,  # the contract's word ("VMs (host, port, addresses)")
        "port_id": vm.port_id,
        "namespace": ns,
        "interface": names.vm_link(vm.name),
        "mac": mac,
        "mtu": mtu,
        "addresses": netns.ipv4_addresses(ns, names.VM_IFNAME) if mac else [],
        "dhcp": vm.dhcp,
        "present": mac is not None,
        # Scheduled VMs (`vm add --schedule`): the placement consumer and what it holds.
        "placement": (
            None
            if vm.consumer is None
            else {"consumer": vm.consumer, "vcpus": vm.vcpus, "ram_mb": vm.ram_mb}
        ),
    }
