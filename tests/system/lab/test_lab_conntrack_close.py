"""TCP close with real VMs across two lab hosts (eBPF datapath): the kernel reports the
FIN/RST of the packets it forwards, and the agents end the connection's state.

    lan 10.0.0.0/24: vm1 10.0.0.10 (h1, firewalled: replies only)   vm3 10.0.0.30 (h2)

- vm1 connects to a closed port of vm3: vm3's RST enters on h2 only (it reaches vm1 by
  VNI), and the connection's state is gone within seconds on both hosts — not after
  TCP's ten-minute idle timeout (the refusal itself shows the firewall tracked it:
  without the entry the RST would have been dropped);
- vm1 fetches from a server on vm3 that closes: FIN goes through h1's kernel flow and
  the reply flow on h2, and `tessera conntrack` on h2 shows the connection `closed`.

vm1's connections are tracked where their replies enter, on h2: h1's flow asks h2's
datapath to commit each one as it arrives (`OutputTunnel.commit`), and h2's datapath
sees both directions' TCP flags. h1's agent holds no entry for them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import (
    Lab,
    firewall,
    lab_up,
    root_missing,
    tessera,
)
from test_lab_stateful import CLIENT, PORT, Net

from support.wait import wait_until
from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

CLOSED = PORT + 1  # nothing listens there: vm3's kernel answers RST


@pytest.fixture(scope="module")
def closing_net() -> Iterator[Net]:
    with lab_up("--hosts", "2", "--datapath", "ebpf") as lab:
        n = Net(lab)
        try:
            lan = lab.create("/bridges", {"name": "lan"})["id"]
            ports = {}
            for name, host, address in (
                ("vm1", "h1", "10.0.0.10/24"),
                ("vm3", "h2", "10.0.0.30/24"),
            ):
                ports[name] = lab.create(f"/bridges/{lan}/ports")["id"]
                lab.cmd(
                    "vm", "add", name, "--host", host, "--port", ports[name], "--ip", address,
                    timeout=90,
                )  # fmt: skip
            firewall(lab, "vm1", ports["vm1"])
            yield n
        finally:
            n.stop()


def _entries(lab: Lab, host: int, dport: int) -> list[dict[str, Any]]:
    out = tessera("conntrack", "--host", names.host_id(lab.name, host), "--json").stdout
    entries: list[dict[str, Any]] = json.loads(out)["entries"]
    return [e for e in entries if e["forward"]["dst_port"] == dport]


def test_a_reset_from_the_far_host_ends_the_connection_on_both_hosts(closing_net: Net) -> None:
    lab = closing_net.lab
    proc = lab.exec("vm1", sys.executable, "-c", CLIENT, "10.0.0.30", str(CLOSED), "5", check=False)
    assert proc.returncode == 1 and "refused" in proc.stdout.lower(), proc.stdout
    # h2's datapath saw the RST (the reply): the connection is reset and gone within
    # seconds there, not after TCP's ten idle minutes; h1 never held it.
    seen: list[str] = []

    def gone() -> bool:
        entries = _entries(lab, 1, CLOSED)
        seen.extend(e["state"] for e in entries)
        return not entries and not _entries(lab, 2, CLOSED)

    wait_until(gone, timeout=30, what="the reset connection's state to go from both hosts")
    assert set(seen) <= {"established", "reset"}, seen


def test_a_fin_through_the_kernel_flow_shows_the_connection_closed(closing_net: Net) -> None:
    lab = closing_net.lab
    closing_net.server("vm3", "10.0.0.30")
    proc = lab.exec("vm1", sys.executable, "-c", CLIENT, "10.0.0.30", str(PORT), "5", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Both ends closed: the client's FIN passed h1's forward flow (and reached h2's
    # entry with the packet), the server's the reply flow on h2: h2's datapath entry
    # has both FINs, each side's, and is closed (it expires in seconds, not minutes).
    entry = wait_until(
        lambda: [e for e in _entries(lab, 2, PORT) if e["state"] == "closed"],
        timeout=10,
        what="h2's entry to be closed",
    )[0]
    assert entry["timeout"] <= 10
    assert _entries(lab, 1, PORT) == []
    human = tessera("conntrack", "--host", names.host_id(lab.name, 2)).stdout
    assert "closed" in human
