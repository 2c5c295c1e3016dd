"""`tessera lab up`: make the lab, or check and repair the one that runs.

Order: state first (so `down` can undo a half-made lab), then ZooKeeper, the API (with
`--embedded-zookeeper`: every cluster node at once, each running a member of the NSDB's
ensemble, node 1 serving the API), Cassandra (`--cassandra N`), the
underlay and host namespaces, the relay that lets agents reach ZooKeeper, the tunnel
zone, the agents; then it waits until the API reports every host alive, and (with
Cassandra) registers every host in placement. Each step
leaves a healthy piece alone, so running `up` again repairs exactly what is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from tessera.client.errors import UserError
from tessera.lab import api, dhcp, hosts, names, services, state, vms
from tessera.lab import cassandra as lab_cassandra
from tessera.lab import placement as lab_placement
from tessera.lab.errors import LabError
from tessera.lab.state import LabState
from tessera.nsdb.connect import parse_nsdb_url

DATAPATHS = ("ebpf", "userspace")
DEFAULT_HOSTS = 2
ALIVE_TIMEOUT = 60.0

Say = Callable[[str], None]


def check_machine() -> None:
    if os.geteuid() != 0:
        raise LabError("tessera lab needs root (it makes network namespaces and loads eBPF)")
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            raise LabError(f"tessera lab needs '{tool}' (apt install iproute2 util-linux)")


def check_nsdb_url(url: str) -> str:
    try:
        shared = parse_nsdb_url(url).backend == "zookeeper"
    except ValueError:
        shared = False
    if not shared:
        raise LabError(
            f"--nsdb '{url}': the lab's agents need a shared ZooKeeper, zk://HOST:PORT/ROOT"
        )
    services.zk_upstreams(url)  # validates HOST:PORT
    return url


def check_embedded(cluster_nodes: int, nsdb: str | None) -> None:
    """An embedded ensemble is the cluster nodes' members: an odd number of them (one is
    a standalone member; two would stop serving with either one down, as would four
    with two), and it is the lab's NSDB, so it cannot be combined with another one."""
    if nsdb is not None:
        raise LabError("--embedded-zookeeper and --nsdb exclude each other: choose one NSDB")
    if cluster_nodes % 2 == 0:
        raise LabError(
            f"--embedded-zookeeper needs an odd number of cluster nodes (1 for a standalone "
            f"member, 3 or more for an ensemble that survives a node), not {cluster_nodes}"
        )


def _existing_or_new(
    name: str,
    datapath: str | None,
    nsdb: str | None,
    cluster_nodes: int | None,
    embedded: bool,
) -> LabState:
    current = state.load(name)
    if current is None:
        current = LabState(
            name=name,
            index=state.free_index(),
            datapath=datapath or "ebpf",
            own_nsdb=nsdb is None,
            nsdb_url=nsdb or "",
            cluster_nodes=cluster_nodes or 1,
            embedded_zookeeper=embedded,
        )
        current.save()
        return current
    if embedded and not current.embedded_zookeeper:
        runs = "its own ZooKeeper" if current.own_nsdb else f"on {current.nsdb_url}"
        raise LabError(
            f"lab {name} runs {runs}, not embedded members: "
            f"`tessera lab down --name {name}` first to change it"
        )
    if (
        current.embedded_zookeeper
        and cluster_nodes is not None
        and cluster_nodes != current.cluster_nodes
    ):
        raise LabError(
            f"lab {name}'s {current.cluster_nodes} cluster nodes run its ZooKeeper ensemble, "
            f"which cannot grow or shrink: `tessera lab down --name {name}` first"
        )
    if datapath is not None and datapath != current.datapath:
        raise LabError(
            f"lab {name} runs the {current.datapath} datapath: "
            f"`tessera lab down --name {name}` first to change it"
        )
    if nsdb is not None and (current.own_nsdb or nsdb != current.nsdb_url):
        raise LabError(
            f"lab {name} uses {'its own ZooKeeper' if current.own_nsdb else current.nsdb_url}: "
            f"`tessera lab down --name {name}` first to change it"
        )
    return current


def up(
    name: str,
    host_count: int | None,
    datapath: str | None,
    nsdb: str | None,
    say: Say,
    timeout: float = ALIVE_TIMEOUT,
    cluster_nodes: int | None = None,
    embedded_zookeeper: bool = False,
    cassandra_nodes: int | None = None,
    host_vcpus: int | None = None,
    host_ram_mb: int | None = None,
) -> LabState:
    check_machine()
    names.check_lab_name(name)
    if datapath is not None and datapath not in DATAPATHS:
        raise LabError(f"--datapath must be ebpf or userspace, not '{datapath}'")
    if embedded_zookeeper:
        check_embedded(cluster_nodes or 1, nsdb)
    if nsdb is not None:
        check_nsdb_url(nsdb)
        services.check_reachable(nsdb)
    if host_count is not None and not 1 <= host_count <= names.MAX_HOSTS:
        raise LabError(f"--hosts must be 1..{names.MAX_HOSTS}")
    if cluster_nodes is not None and not 1 <= cluster_nodes <= services.MAX_CLUSTER_NODES:
        raise LabError(f"--cluster-nodes must be 1..{services.MAX_CLUSTER_NODES}")
    for option, value in (("--host-vcpus", host_vcpus), ("--host-ram", host_ram_mb)):
        if value is not None and value < 1:
            raise LabError(f"{option} must be at least 1")
    with state.locked():
        existing = state.load(name)
        if host_vcpus is not None or host_ram_mb is not None:
            runs = existing.cassandra_nodes if existing is not None else 0
            if not (cassandra_nodes if cassandra_nodes is not None else runs):
                raise LabError(
                    "--host-vcpus and --host-ram are what each host reports to placement, "
                    "which needs Cassandra (--cassandra N)"
                )
        lab = _existing_or_new(name, datapath, nsdb, cluster_nodes, embedded_zookeeper)
        if cluster_nodes is not None and cluster_nodes != lab.cluster_nodes:
            lab.cluster_nodes = cluster_nodes
            lab.save()
        lab_cassandra.check_count(lab, cassandra_nodes, new=existing is None)
        if cassandra_nodes and cassandra_nodes != lab.cassandra_nodes:
            lab.cassandra_nodes = cassandra_nodes
            lab.save()
        if host_vcpus is not None or host_ram_mb is not None:
            lab.host_vcpus = host_vcpus if host_vcpus is not None else lab.host_vcpus
            lab.host_ram_mb = host_ram_mb if host_ram_mb is not None else lab.host_ram_mb
            lab.save()
        if host_count is not None and host_count < len(lab.hosts):
            raise LabError(
                f"lab {name} has {len(lab.hosts)} hosts and cannot shrink: "
                f"`tessera lab down --name {name}` first"
            )
        try:
            _make(lab, host_count, say, timeout)
        except UserError as exc:
            raise LabError(
                f"{exc.message} (`tessera lab up --name {name}` again repairs the lab, "
                f"`tessera lab down --name {name}` removes it)"
            ) from None
    return lab


def _neutron(lab: LabState) -> str:
    """The Neutron API's URL; an API process started before the lab served Neutron
    (still running, so kept) serves none."""
    if lab.neutron_url is not None:
        return lab.neutron_url
    return "not served by this API process (started by an older tessera): `lab down`, `lab up`"


def _make(lab: LabState, host_count: int | None, say: Say, timeout: float) -> None:
    wanted = host_count if host_count is not None else (len(lab.hosts) or DEFAULT_HOSTS)
    for index in range(len(lab.hosts) + 1, wanted + 1):
        lab.hosts.append(hosts.host_state(lab, index))
    lab.save()

    if lab.embedded_zookeeper:
        services.ensure_embedded_cluster(lab)
        members = services.embedded_members(lab)
        say(
            f"ZooKeeper    embedded in {len(members)} cluster node(s): "
            + ", ".join(f"{m['node']} {m['address']}" for m in members)
        )
        say(f"API          {lab.api_url}")
        say(f"Neutron      {_neutron(lab)}")
    else:
        if lab.own_nsdb:
            zk = services.ensure_zookeeper(lab)
            say(f"ZooKeeper    {zk.address} (pid {zk.pid})")
        else:
            say(f"NSDB         {lab.nsdb_url}")
        services.ensure_api(lab)
        say(f"API          {lab.api_url}")
        say(f"Neutron      {_neutron(lab)}")
        services.ensure_cluster_nodes(lab)
    if lab.cluster_nodes > 1:
        say(f"cluster      {lab.cluster_nodes} nodes: tessera cluster status --nsdb {lab.nsdb_url}")
    if lab.cassandra_nodes:
        ring = lab_cassandra.ensure(lab)
        say(
            f"Cassandra    {lab.cassandra_nodes} node(s) UN: {', '.join(ring.addresses)} "
            f"(keyspace {ring.keyspace}, RF {ring.replication_factor})"
        )

    hosts.ensure_underlay(lab)
    for host in lab.hosts:
        hosts.ensure_host(lab, host)
    net = names.underlay_network(lab.index)
    say(f"underlay     {net} MTU {names.UNDERLAY_MTU} in {lab.netns(names.UNDERLAY)}")
    services.ensure_relay(lab)

    with api.client(lab) as client:
        zone = api.ensure_tunnel_zone(client, lab.tunnel_zone_id, f"lab-{lab.name}")
    if zone != lab.tunnel_zone_id:
        for host in lab.hosts:  # they joined a zone that is gone
            hosts.stop_agent(lab, host)
        lab.tunnel_zone_id = zone
        lab.save()
    say(f"tunnel zone  {zone} (vxlan)")

    started = []
    for host in lab.hosts:
        before = hosts.agent_pid(lab, host)
        pid = hosts.start_agent(lab, host)
        if before is None:
            started.append(f"{host.name}={pid}")
    if started:
        say(f"agents       started {' '.join(started)} (datapath {lab.datapath})")
    hosts.wait_agents_alive(lab, lab.hosts, timeout)
    say("hosts alive  " + ", ".join(f"{h.name} {h.underlay_ip}" for h in lab.hosts))
    if lab.cassandra_nodes:
        changed = lab_placement.register_hosts(lab)
        say(
            f"placement    {', '.join(h.name for h in lab.hosts)}"
            f"{' each' if len(lab.hosts) > 1 else ''} "
            f"{lab_placement.describe_inventory(lab_placement.inventory(lab))}"
            + (f" (registered {' '.join(changed)})" if changed else "")
        )
    repaired = _repair_vms(lab)
    if repaired:
        say(f"VMs repaired {' '.join(repaired)}")
    say(f"state, logs  {lab.dir}")


def _repair_vms(lab: LabState) -> list[str]:
    """Remake the cables of VMs whose namespace went away (with their DHCP lease), and
    bind again a port left unbound; a port bound elsewhere since is not taken back, and a
    VM whose port was deleted is left as it is."""
    repaired: list[str] = []
    with api.client(lab) as client:
        for vm in lab.vms.values():
            try:
                port = api.port(client, vm.port_id)
            except LabError:
                continue
            host = lab.host(vm.host)
            remade = not vms.describe(lab, vm)["present"]
            if remade:
                vms.plumb(lab, vm)
            rebound = not port.get("host_id")
            if rebound:
                api.bind(client, host.host_id, vm.port_id, names.vm_link(vm.name))
            if remade or rebound:
                repaired.append(vm.name)
                vms.wait_served(lab, host, vm.port_id)
            if remade and vm.dhcp:
                script = dhcp.write_script(lab.dir)
                dhcp.run_client(lab.netns(vm.name), names.VM_IFNAME, script, vm.name)
    return repaired
