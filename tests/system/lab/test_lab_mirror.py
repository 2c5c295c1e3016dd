"""Port mirroring in a lab: a mirror on vm1's port (host h1) copies its ICMP and TCP to a
capture VM on h2, whose `tcpdump` sees them, while the original traffic between vm1 and
vm2 (h2) is unchanged: every ping answered once, every byte of a TCP transfer delivered,
nothing duplicated at vm2. Deleting the mirror stops the copies at once.

    bridge lan 10.0.0.0/24: vm1 10.0.0.10 (h1), vm2 10.0.0.20 (h2)
    bridge tap 10.9.0.0/24: cap 10.9.0.10 (h2), the capture VM
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab_helpers import Lab, env, lab_up, root_missing, tessera, update

from support.local import TESSERA
from support.wait import wait_until

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

VM1, VM2 = "10.0.0.10", "10.0.0.20"
VM1_MAC = "02:00:00:00:0a:10"
BETWEEN = f"host {VM1} and host {VM2}"


@dataclass
class Net:
    lab: Lab
    vm1_port: str
    cap_port: str


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with lab_up("--hosts", "2") as lab:
        lan = lab.create("/bridges", {"name": "lan"})["id"]
        tap = lab.create("/bridges", {"name": "tap"})["id"]
        ports = {}
        for name, host, bridge, ip, extra in (
            ("vm1", "h1", lan, f"{VM1}/24", ["--mac", VM1_MAC]),
            ("vm2", "h2", lan, f"{VM2}/24", []),
            ("cap", "h2", tap, "10.9.0.10/24", []),
        ):
            ports[name] = lab.create(f"/bridges/{bridge}/ports")["id"]
            lab.cmd("vm", "add", name, "--host", host, "--port", ports[name], "--ip", ip, *extra)
        # Both VMs known to the bridge before the test: no flood reaches the capture side.
        ping = lab.exec("vm1", "ping", "-c", "2", "-W", "2", VM2, check=False)
        assert "2 received" in ping.stdout, ping.stdout
        yield Net(lab, ports["vm1"], ports["cap"])


def _cli(net: Net, *args: str) -> str:
    assert net.lab.api_url is not None
    return tessera("--api", net.lab.api_url, *args).stdout


def _capturing(lab: Lab, vm: str, expression: str, action: Callable[[], None]) -> list[str]:
    """The packets `tcpdump` in `vm` prints (one line each) while `action()` runs."""
    dump = subprocess.Popen(
        [TESSERA, "lab", "exec", "--name", lab.name, vm, "--",
         "timeout", "15", "tcpdump", "-l", "-n", "-i", "eth0", expression],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    try:
        assert dump.stderr is not None
        os.set_blocking(dump.stderr.fileno(), False)
        started = b""
        deadline = time.monotonic() + 10
        while b"listening on" not in started and time.monotonic() < deadline:
            started += dump.stderr.read() or b""
            time.sleep(0.05)
        assert b"listening on" in started, f"tcpdump did not start: {started!r}"
        action()
        time.sleep(0.5)  # the last copies in flight
        dump.terminate()
        out, _ = dump.communicate(timeout=10)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait(timeout=5)
    return [line for line in out.decode(errors="replace").splitlines() if line.strip()]


def _ping(net: Net) -> None:
    ping = net.lab.exec("vm1", "ping", "-c", "3", "-i", "0.2", "-W", "2", VM2, check=False)
    assert "3 packets transmitted, 3 received" in ping.stdout, ping.stdout
    assert "DUP!" not in ping.stdout, "the original must not be duplicated"


def _tcp_transfer(net: Net, tmp_path: Path) -> None:
    """300 kB from vm1 to vm2 with nc; every byte must arrive, once."""
    sent, received = tmp_path / "sent", tmp_path / "received"
    sent.write_bytes(os.urandom(300_000))
    received.unlink(missing_ok=True)
    lab = net.lab
    listener = subprocess.Popen(
        [TESSERA, "lab", "exec", "--name", lab.name, "vm2", "--",
         "sh", "-c", f"exec nc -l -w 10 5001 > {received}"],
        env=env(),
    )  # fmt: skip
    try:
        wait_until(
            lambda: "5001" in lab.exec("vm2", "ss", "-Hltn").stdout,
            timeout=10,
            what="the listener in vm2",
        )
        send = lab.exec("vm1", "sh", "-c", f"nc -N -w 10 {VM2} 5001 < {sent}", check=False)
        assert send.returncode == 0, send.stderr
        assert listener.wait(timeout=20) == 0
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(timeout=5)
    digest = hashlib.sha256
    assert digest(received.read_bytes()).hexdigest() == digest(sent.read_bytes()).hexdigest()


def test_a_mirror_copies_icmp_and_tcp_to_a_capture_vm_on_another_host(
    net: Net, tmp_path: Path
) -> None:
    lab = net.lab
    mirror = _cli(net, "--json", "mirror", "create", "--to-port", net.cap_port, "--name", "tap")
    mirror_id = json.loads(mirror)["id"]
    try:
        update(
            lab,
            f"/ports/{net.vm1_port}",
            {"inbound_mirror_ids": [mirror_id], "outbound_mirror_ids": [mirror_id]},
        )
        # What vm2 receives is what it would receive without the mirror: each echo once.
        at_vm2: list[str] = []

        def ping_seen_by_vm2() -> None:
            at_vm2.extend(_capturing(lab, "vm2", f"icmp and {BETWEEN}", lambda: _ping(net)))

        copies = _capturing(lab, "cap", BETWEEN, ping_seen_by_vm2)
        requests = [line for line in copies if "ICMP echo request" in line]
        replies = [line for line in copies if "ICMP echo reply" in line]
        assert len(requests) == 3 and len(replies) == 3, copies
        assert all(f"{VM1} > {VM2}" in line for line in requests), requests
        assert len([line for line in at_vm2 if "echo request" in line]) == 3, at_vm2

        tcp = _capturing(lab, "cap", f"tcp and {BETWEEN}", lambda: _tcp_transfer(net, tmp_path))
        to_vm2 = [line for line in tcp if f"> {VM2}.5001:" in line]
        from_vm2 = [line for line in tcp if f"{VM2}.5001 > {VM1}." in line]
        assert any("Flags [S]" in line for line in to_vm2), tcp[:5]
        assert len(to_vm2) > 10 and from_vm2, f"{len(to_vm2)} / {len(from_vm2)} TCP copies"

        # `tessera trace` shows the copy.
        trace = _cli(
            net, "trace", "--port", net.vm1_port, "--src-mac", VM1_MAC,
            "--src-ip", VM1, "--dst-ip", VM2, "--protocol", "tcp", "--dst-port", "5001",
        )  # fmt: skip
        assert "port inbound mirror tap copies the packet" in trace, trace
        assert f"mirror copy to port {net.cap_port}" in trace, trace
    finally:
        # Deleting the mirror stops the copies at once; the traffic goes on as before.
        with lab.api() as client:
            assert client.delete(f"mirrors/{mirror_id}").status_code == 204
    after = _capturing(lab, "cap", BETWEEN, lambda: _ping(net))
    assert after == [], after
    assert lab.get(f"/ports/{net.vm1_port}")["inbound_mirror_ids"] == []
