"""How a lab names what it makes: namespaces, interfaces, addresses, host ids.

Every namespace of lab L is `tsr-L-<what>`; lab names have no '-', so the prefix
`tsr-L-` never matches another lab's namespaces and `down` can find everything of its
own even when its state file is lost. Interface names live inside the lab's namespaces
(never in the root one), so they only need to be unique per namespace and fit the
kernel's 15 characters. Lab L's underlay is 198.18.I.0/24, I being the lab's index:
several labs coexist without sharing addresses, all within 198.18.0.0/15.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid

from tessera.lab.errors import LabError

NS_PREFIX = "tsr-"
DEFAULT_LAB = "default"
MAX_HOSTS = 250
MAX_LABS = 256  # 198.18.0.0/24 .. 198.18.255.0/24
UNDERLAY_MTU = 1600  # VXLAN adds 50 bytes to a VM's 1500-byte packets
UNDERLAY_NET = ipaddress.IPv4Network("198.18.0.0/15")

UNDERLAY = "underlay"  # the underlay namespace's suffix (not a valid VM name)
UNDERLAY_BRIDGE = "br0"  # inside the underlay namespace
HOST_UPLINK = "ul0"  # a host's end of its underlay veth, inside the host namespace
VM_IFNAME = "eth0"  # inside a VM
VM_LINK_PREFIX = "vm-"  # a VM's cable, host side: `vm-NAME`
IFNAMSIZ = 15

ZK_RELAY_PORT = 2181  # where an agent finds the NSDB, inside its host namespace
# Embedded ZooKeeper members (`lab up --embedded-zookeeper`): each lab reserves
# EMBEDDED_ZK_PORTS ports from EMBEDDED_ZK_PORT_BASE + index * EMBEDDED_ZK_PORTS, three per
# cluster node (client, peer, election). All 256 labs fit below 32768, the start of the
# kernel's default ephemeral range: a member that is down must find its ports free again,
# and the others keep calling it from ephemeral source ports.
EMBEDDED_ZK_PORT_BASE = 20000
EMBEDDED_ZK_PORTS = 27  # 3 ports x 9 nodes (services.MAX_CLUSTER_NODES)

_LAB_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,23}$")
MAX_VM_NAME = 32  # namespace names may be long; the cable's name is shortened to fit
_VM_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_VM_NAME - 1}}}$")
_HOST_RE = re.compile(r"^h([1-9][0-9]*)$")
# Names uuid5 derives host ids from, so a lab's hosts keep their ids across `up`s.
_HOST_ID_NAMESPACE = uuid.UUID("6b2f3c1e-8f0e-5a4c-9d57-7465737365ee")


def check_lab_name(name: str) -> str:
    if not _LAB_RE.match(name):
        raise LabError(
            f"invalid lab name '{name}': use 1-24 lowercase letters, digits or '_', "
            "starting with a letter or digit"
        )
    return name


def check_vm_name(name: str) -> str:
    # Host names are refused in any case: `lab exec H1` next to host h1 would mislead.
    if not _VM_RE.match(name) or _HOST_RE.match(name.lower()) or name.lower() == UNDERLAY:
        raise LabError(
            f"invalid VM name '{name}': use 1-{MAX_VM_NAME} letters, digits, '-' or '_', "
            f"starting with a letter or digit (not h1, h2..., not '{UNDERLAY}')"
        )
    return name


def host_name(index: int) -> str:
    return f"h{index}"


def host_index(name: str) -> int | None:
    """1 for 'h1'; None when `name` is not a host name."""
    match = _HOST_RE.match(name)
    return int(match.group(1)) if match else None


def netns(lab: str, what: str) -> str:
    """The namespace of host `hK`, VM `what` or the underlay (`UNDERLAY`) of `lab`."""
    return f"{NS_PREFIX}{lab}-{what}"


def netns_prefix(lab: str) -> str:
    return f"{NS_PREFIX}{lab}-"


def health_netns_prefix(lab: str, node: int) -> str:
    """The prefix of the probe namespaces cluster node `node` makes for the health
    monitor (one per router): inside the lab's prefix, so that `down` removes what a
    killed node left, and with a '.', which no VM name has."""
    return f"{netns_prefix(lab)}hm.c{node}."


def health_probe_host(node: int, hosts: int) -> int:
    """The host whose agent serves cluster node `node`'s probe ports: h((node mod N)+1),
    so that with several nodes and hosts a failover also moves the probes to another
    host."""
    return node % hosts + 1


def vm_link(vm: str) -> str:
    """The host-side end of a VM's cable: the interface bound to the VM's port.

    `vm-NAME` when that fits the kernel's 15 characters; else the name's start and a
    hash of the whole name (`vm-databa-1f3c9`), stable and distinct per VM name."""
    link = f"{VM_LINK_PREFIX}{vm}"
    if len(link) <= IFNAMSIZ:
        return link
    digest = hashlib.sha1(vm.encode()).hexdigest()[:5]
    keep = IFNAMSIZ - len(VM_LINK_PREFIX) - len(digest) - 1
    return f"{VM_LINK_PREFIX}{vm[:keep]}-{digest}"


def underlay_network(lab_index: int) -> ipaddress.IPv4Network:
    if not 0 <= lab_index < MAX_LABS:
        raise LabError(f"lab index {lab_index} outside 0..{MAX_LABS - 1}")
    return ipaddress.IPv4Network(f"198.18.{lab_index}.0/24")


def underlay_address(lab_index: int, host: int) -> str:
    """198.18.I.K for host hK of the lab with index I."""
    if not 1 <= host <= MAX_HOSTS:
        raise LabError(f"host index {host} outside 1..{MAX_HOSTS}")
    return str(underlay_network(lab_index).network_address + host)


def host_id(lab: str, host: int) -> str:
    """A stable UUID for host hK of `lab`: bindings survive an agent restart or an
    `up` that repairs the lab."""
    return str(uuid.uuid5(_HOST_ID_NAMESPACE, f"{lab}/{host_name(host)}"))


def placement_aggregate(lab: str) -> str:
    """The placement aggregate every host of `lab` is a member of (`vm add --schedule`
    asks for it, so that no provider but the lab's hosts is ever chosen)."""
    return str(uuid.uuid5(_HOST_ID_NAMESPACE, f"{lab}/placement-aggregate"))


def embedded_zk_ports(lab_index: int, node: int) -> tuple[int, int, int]:
    """(client, peer, election) ports of the embedded ZooKeeper member of cluster node
    `node` (1..9) of lab `lab_index`."""
    first = EMBEDDED_ZK_PORT_BASE + lab_index * EMBEDDED_ZK_PORTS + 3 * (node - 1)
    return first, first + 1, first + 2
