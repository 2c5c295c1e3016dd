"""An agent holds the Host objects it needs — its own and those of the hosts its
closure's ports are bound to — not every host: a bind rewrites its host's object (to
serialise binds there), and with every Host watched by every agent each VM port bound
anywhere woke the whole fleet."""

from __future__ import annotations

from typing import Any

from agent_harness import Cloud

from tessera.model import Host as HostObject


def _hosts(host: Any) -> set[str]:
    return {id for kind, id in host.agent.cache.held() if kind == HostObject.kind}


def test_an_agent_holds_the_hosts_its_ports_reach_and_follows_new_bindings(cloud: Cloud) -> None:
    h1 = cloud.host("h1", "198.18.0.1")
    h2 = cloud.host("h2", "198.18.0.2")
    h3 = cloud.host("h3", "198.18.0.3")
    shared, alone = cloud.bridge("shared"), cloud.bridge("alone")
    cloud.vm(h1, shared, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h2, shared, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.vm(h3, alone, "tap3", "02:00:00:00:00:03", "10.0.1.3")
    cloud.settle()
    assert _hosts(h1) == {h1.host_id, h2.host_id}
    assert _hosts(h3) == {h3.host_id}  # nothing of h1's or h2's
    where = h1.agent.locate(vm2.port_id)
    assert where is not None and where.host_id == h2.host_id and where.remote_ip

    vm3 = cloud.vm(h3, shared, "tap4", "02:00:00:00:00:04", "10.0.0.4")
    cloud.settle()
    assert _hosts(h1) == {h1.host_id, h2.host_id, h3.host_id}
    assert _hosts(h3) == {h1.host_id, h2.host_id, h3.host_id}
    where = h1.agent.locate(vm3.port_id)
    assert where is not None and where.host_id == h3.host_id and where.remote_ip
