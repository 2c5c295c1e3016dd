"""Port tables for tests that write flows straight into the eBPF maps.

Local port n is the device of ifindex n: the program redirects by ifindex and numbering
ports is the agent's business, so these tests take the simplest numbering there is.
"""

from __future__ import annotations

from tessera.datapath.base import MAX_PORT_NO
from tessera.datapath.ebpf.actions import Device

#: port -> (ifindex, is a veth) for `tessera.datapath.ebpf.actions.encode`
DEVICES: dict[int, Device] = {n: (n, False) for n in range(1, MAX_PORT_NO + 1)}
#: ifindex -> port, to decode what `DEVICES` encoded
PORTS: dict[int, int] = {n: n for n in range(1, MAX_PORT_NO + 1)}
