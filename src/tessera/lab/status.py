"""`tessera lab status`: what runs, which hosts are alive (and, with Cassandra, what
placement has allocated on each), where the VMs are."""

from __future__ import annotations

from typing import Any

from tessera.client.errors import ApiError, ApiUnreachable
from tessera.lab import api, hosts, names, procs, services, vms
from tessera.lab import cassandra as lab_cassandra
from tessera.lab import placement as lab_placement
from tessera.lab.state import LabState


def gather(lab: LabState) -> dict[str, Any]:
    """The lab as data (the `--json` output)."""
    alive: dict[str, bool] | None
    try:
        with api.client(lab) as client:
            alive = api.hosts_alive(client)
    except (ApiError, ApiUnreachable):
        alive = None
    embedded = lab.embedded_zookeeper
    # With Cassandra: each host's placement usage (None while placement does not answer).
    placed = lab_placement.usages(lab) if lab.cassandra_nodes and alive is not None else None
    zk_pid = services.zookeeper(lab).pid if lab.own_nsdb and not embedded else None
    return {
        "name": lab.name,
        "datapath": lab.datapath,
        "directory": str(lab.dir),
        "api": {
            "url": lab.api_url,
            "pid": procs.read_pid(lab.pid_file("api")),
            "reachable": alive is not None,
        },
        # Served by the API process: its pid and health are the API's.
        "neutron": {"url": lab.neutron_url},
        "nsdb": {
            "url": lab.nsdb_url,
            "own": lab.own_nsdb,
            "pid": zk_pid,
            # Only for an embedded ensemble: other labs' status stays as it was.
            **({"embedded": True, "members": services.embedded_members(lab)} if embedded else {}),
        },
        "cluster_nodes": [
            {
                "name": f"{lab.name}-c{k}",
                "pid": procs.read_pid(lab.pid_file(services.cluster_node_process(k))),
            }
            for k in range(2, lab.cluster_nodes + 1)
        ],
        "relay_pid": procs.read_pid(lab.pid_file("relay")),
        # Only for a lab running Cassandra: other labs' status stays as it was.
        **({"cassandra": lab_cassandra.describe(lab)} if lab.cassandra_nodes else {}),
        "underlay": {
            "namespace": lab.netns(names.UNDERLAY),
            "network": str(names.underlay_network(lab.index)),
            "mtu": names.UNDERLAY_MTU,
        },
        "tunnel_zone_id": lab.tunnel_zone_id,
        "hosts": [
            {
                "name": h.name,
                "host_id": h.host_id,
                "namespace": lab.netns(h.name),
                "underlay_ip": h.underlay_ip,
                "agent_pid": hosts.agent_pid(lab, h),
                "alive": None if alive is None else alive.get(h.host_id, False),
                "log": str(lab.log_file(hosts.agent_process(h))),
                **(
                    {"placement": placed.get(h.name) if placed is not None else None}
                    if lab.cassandra_nodes
                    else {}
                ),
            }
            for h in lab.hosts
        ],
        "vms": [vms.describe(lab, vm) for vm in sorted(lab.vms.values(), key=lambda v: v.name)],
    }


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _pid(value: int | None) -> str:
    return f"pid {value}" if value is not None else "stopped"


def render(data: dict[str, Any]) -> str:
    """Readable text; every id in full."""
    lines = [
        f"lab {data['name']}  datapath {data['datapath']}  state {data['directory']}",
        f"API     {data['api']['url']}  ({_pid(data['api']['pid'])}"
        f"{'' if data['api']['reachable'] else ', not answering'})",
    ]
    if data.get("neutron", {}).get("url"):
        lines.append(f"Neutron {data['neutron']['url']}  (served by the API process)")
    nsdb = data["nsdb"]
    if nsdb.get("embedded"):
        lines.append(f"NSDB    {nsdb['url']}  (embedded in the cluster nodes)")
        for member in nsdb["members"]:
            lines.append(
                f"  ZooKeeper member of {member['node']}  {member['address']}  "
                f"({_pid(member['pid'])})"
            )
    elif nsdb["own"]:
        lines.append(f"NSDB    {nsdb['url']}  (ZooKeeper {_pid(nsdb['pid'])})")
    else:
        lines.append(f"NSDB    {nsdb['url']}  (external)")
    for node in data.get("cluster_nodes", []):
        lines.append(f"cluster node {node['name']}  ({_pid(node['pid'])})")
    ring = data.get("cassandra")
    if ring:
        lines.append(
            f"Cassandra keyspace {ring['keyspace']} (RF {ring['replication_factor']})  "
            + "  ".join(
                f"{n['node']} {n['address']} {n['state']} ({_pid(n['pid'])})" for n in ring["nodes"]
            )
        )
    under = data["underlay"]
    lines.append(
        f"underlay {under['network']} MTU {under['mtu']} in {under['namespace']}  "
        f"(relay {_pid(data['relay_pid'])})"
    )
    lines.append("")
    host_rows = [["HOST", "ALIVE", "AGENT", "UNDERLAY", "HOST ID"]]
    for h in data["hosts"]:
        host_rows.append(
            [h["name"], _yes_no(h["alive"]), _pid(h["agent_pid"]), h["underlay_ip"], h["host_id"]]
        )
    lines.extend(_table(host_rows))
    if any("placement" in h for h in data["hosts"]):
        lines.append("placement (used/capacity)  " + "  ".join(_placed(h) for h in data["hosts"]))
    if data["vms"]:
        lines.append("")
        vm_rows = [["VM", "HOST", "PORT", "MAC", "MTU", "ADDRESSES"]]
        for vm in data["vms"]:
            addresses = ", ".join(vm["addresses"]) or ("(DHCP)" if vm["dhcp"] else "-")
            vm_rows.append(
                [
                    vm["name"],
                    vm["host"] + (" (scheduled)" if vm.get("placement") else ""),
                    vm["port_id"],
                    vm["mac"] or "(missing)",
                    str(vm["mtu"] or "-"),
                    addresses,
                ]
            )
        lines.extend(_table(vm_rows))
    return "\n".join(lines)


def _placed(host: dict[str, Any]) -> str:
    classes = host.get("placement")
    if not classes:
        return f"{host['name']} (not registered, or placement not answering)"
    usage = ", ".join(f"{k} {v['used']}/{v['capacity']}" for k, v in classes.items())
    return f"{host['name']} {usage}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
