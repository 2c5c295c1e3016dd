"""Security groups as docs/security-groups.md builds them, with real traffic.

The guide's recipe block is run as it is (bash, the installed `tessera`, against a
two-host lab on the eBPF datapath), then every line of its table is checked with real
connections: the guide cannot drift from what tessera does.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lab_helpers import (
    TESSERA,
    Lab,
    env,
    lab_up,
    root_missing,
)

from support.wait import wait_until

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "security-groups.md"
VMS = {"web1": "10.0.0.11", "web2": "10.0.0.12", "admin": "10.0.0.21"}

# Accepts on ports 22 and 80 and closes at once, for argv[1] seconds.
SERVER = r"""
import select, socket, sys, time
socks = []
for port in (22, 80):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    socks.append(s)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for s in select.select(socks, [], [], 0.5)[0]:
        s.accept()[0].close()
"""


def recipe() -> str:
    """The guide's recipe: the ```sh block that follows "The recipe"."""
    text = GUIDE.read_text()
    after = text[text.index("The recipe") :]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match is not None, "docs/security-groups.md lost its recipe block"
    return match.group(1)


class Net:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.servers: list[subprocess.Popen[bytes]] = []

    def connects(self, vm: str, target: str, port: int) -> bool:
        proc = self.lab.exec(vm, "nc", "-z", "-n", "-w", "2", target, str(port), check=False)
        return proc.returncode == 0

    def pings(self, vm: str, target: str) -> bool:
        proc = self.lab.exec(vm, "ping", "-n", "-c", "1", "-W", "2", target, check=False)
        return proc.returncode == 0

    def stop(self) -> None:
        for proc in self.servers:  # our own children, by their pid
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with lab_up("--hosts", "2", "--datapath", "ebpf") as lab:
        n = Net(lab)
        try:
            assert lab.api_url is not None
            run_env = {**env(), "TESSERA_LAB": lab.name, "TESSERA_API": lab.api_url}
            run_env["PATH"] = f"{Path(TESSERA).parent}:{run_env['PATH']}"
            done = subprocess.run(
                ["bash", "-e", "-u", "-o", "pipefail", "-c", recipe()],
                capture_output=True, text=True, env=run_env, timeout=600, check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"the guide's recipe failed:\n{done.stdout}\n{done.stderr}"
            for vm in VMS:
                argv = [TESSERA, "lab", "exec", "--name", lab.name, vm, "--",
                        sys.executable, "-c", SERVER, "300"]  # fmt: skip
                n.servers.append(
                    subprocess.Popen(
                        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env()
                    )
                )
            for vm in VMS:
                wait_until(
                    lambda vm=vm: ":80 " in lab.exec(vm, "ss", "-Hltn").stdout,
                    timeout=15,
                    what=f"the servers in {vm}",
                )
            yield n
        finally:
            n.stop()


def test_a_remote_group_rule_lets_its_members_in_and_their_replies_back(net: Net) -> None:
    web1 = VMS["web1"]
    assert net.connects("admin", web1, 80)
    assert net.connects("admin", web1, 22)
    assert net.pings("admin", web1)


def test_a_group_lets_in_only_what_its_rules_accept(net: Net) -> None:
    web1 = VMS["web1"]
    assert net.connects("web2", web1, 80)  # TCP 80 from anywhere
    assert not net.connects("web2", web1, 22)  # the group does not trust its own members
    assert not net.pings("web2", web1)


def test_a_default_like_group_keeps_others_out_while_its_egress_is_open(net: Net) -> None:
    admin = VMS["admin"]
    assert not net.connects("web1", admin, 22)
    assert not net.connects("web1", admin, 80)
    assert not net.pings("web1", admin)
    # admin's own connections out (to web2's port 80) and their replies pass.
    assert net.connects("admin", VMS["web2"], 80)


def test_a_port_cannot_send_from_an_address_that_is_not_its_own(net: Net) -> None:
    """web1 sends TCP 80 (accepted by web2's group) from admin's address: web2 must
    never see it. A capture on web2 sees web1's genuine SYN, so it would see a spoofed
    one that got through."""
    lab, web2 = net.lab, VMS["web2"]
    lab.exec("web1", "ip", "addr", "add", f"{VMS['admin']}/32", "dev", "eth0")
    try:
        for source, expected in ((VMS["web1"], True), (VMS["admin"], False)):
            send = functools.partial(
                lab.exec, "web1", "nc", "-z", "-n", "-w", "1", "-s", source, web2, "80",
                check=False,
            )  # fmt: skip
            seen = _captured(net, "web2", f"tcp dst port 80 and src host {source}", send)
            assert seen == expected, f"a SYN from {source} seen by web2: {seen}"
    finally:
        lab.exec("web1", "ip", "addr", "del", f"{VMS['admin']}/32", "dev", "eth0", check=False)


def _captured(net: Net, vm: str, expression: str, send: Callable[[], object]) -> bool:
    """Whether `send()` makes a packet matching `expression` arrive in `vm`."""
    capture = subprocess.Popen(
        [TESSERA, "lab", "exec", "--name", net.lab.name, vm, "--",
         "timeout", "6", "tcpdump", "-l", "-n", "-c", "1", "-i", "eth0", expression],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    try:
        assert capture.stderr is not None
        os.set_blocking(capture.stderr.fileno(), False)
        started = b""
        deadline = time.monotonic() + 10
        while b"listening on" not in started and time.monotonic() < deadline:
            started += capture.stderr.read() or b""
            time.sleep(0.05)
        assert b"listening on" in started, f"tcpdump did not start: {started!r}"
        send()
        out, _ = capture.communicate(timeout=15)
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait()
    return bool(out.strip())
