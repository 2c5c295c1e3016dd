"""Driving `tessera lab` as a user does (the `tessera` command, as a process) and
checking that it leaves nothing behind."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.local import TESSERA
from tessera.lab import names, procs
from tessera.lab.state import lab_dir

BPF_PINS = Path("/sys/fs/bpf/tessera")


def root_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    return None


def require_agent() -> None:
    """The lab's hosts run `tessera agent`: without it no lab comes up. Fail, loudly,
    rather than skip: these tests are the lab's acceptance."""
    if importlib.util.find_spec("tessera.agent.cli") is None:
        pytest.fail("`tessera agent` (tessera.agent.cli) is not available: the lab needs it")


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.pop("TESSERA_LAB", None)
    out.pop("TESSERA_API", None)
    out["PATH"] = f"{Path(sys.executable).parent}:{out.get('PATH', '/usr/bin:/bin')}"
    return out


def tessera(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [TESSERA, *args], capture_output=True, text=True, timeout=timeout, env=env(), check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"tessera {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


# -- what the machine looks like -----------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    netns: frozenset[str]
    root_links: frozenset[str]
    pins: frozenset[str]

    @classmethod
    def take(cls) -> Snapshot:
        links = subprocess.run(
            ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        root_links = frozenset(
            line.split(":")[1].strip().split("@")[0] for line in links.splitlines()
        )
        pins: set[str] = set()
        if BPF_PINS.is_dir():
            pins = {str(p) for p in BPF_PINS.rglob("*")}
        return cls(frozenset(_netns()), root_links, frozenset(pins))


def _netns() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except OSError:
        return []


class Lab:
    """One lab under test, by name; `down()` and `assert_gone()` at the end."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or unique_name()
        self.api_url: str | None = None
        self.pids: set[int] = set()

    # -- commands --

    def up(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = tessera("lab", "up", "--name", self.name, *args, timeout=timeout)
        last = proc.stdout.strip().splitlines()[-1]
        assert last.startswith("TESSERA_API=http://"), proc.stdout
        self.api_url = last.removeprefix("TESSERA_API=")
        return proc

    def cmd(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`tessera lab SUBCOMMAND --name LAB ARGS...` (options before positionals)."""
        sub, rest = args[0], args[1:]
        if sub in ("vm", "agent", "nsdb"):
            return tessera(
                "lab", sub, rest[0], "--name", self.name, *rest[1:], check=check, timeout=timeout
            )
        return tessera("lab", sub, "--name", self.name, *rest, check=check, timeout=timeout)

    def exec(
        self, target: str, *argv: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return tessera(
            "lab", "exec", "--name", self.name, target, "--", *argv, check=check, timeout=timeout
        )

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.cmd("status", "--json").stdout)
        return data

    def down(self) -> subprocess.CompletedProcess[str]:
        self.pids |= self.recorded_pids()
        return tessera("lab", "down", "--name", self.name, timeout=120)

    # -- API --

    def api(self) -> httpx.Client:
        assert self.api_url is not None
        return httpx.Client(base_url=self.api_url + "/", timeout=15.0)

    def create(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.api() as client:
            response = client.post(path.lstrip("/"), json=body or {})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def get(self, path: str) -> Any:
        with self.api() as client:
            response = client.get(path.lstrip("/"))
        assert response.status_code == 200, response.text
        return response.json()

    def health(self) -> int:
        """The API's /health status code (0: no answer)."""
        assert self.api_url is not None
        try:
            return httpx.get(self.api_url + "/health", timeout=5).status_code
        except httpx.HTTPError:
            return 0

    # -- what it made --

    @property
    def dir(self) -> Path:
        return lab_dir(self.name)

    def recorded_pids(self) -> set[int]:
        found: set[int] = set()
        if self.dir.exists():
            for pid_file in self.dir.rglob("*.pid"):
                with contextlib.suppress(ValueError, OSError):
                    found.add(int(pid_file.read_text().split()[0]))
        found |= set(procs.owned_by(self.dir))
        return found

    def namespaces(self) -> set[str]:
        return {n for n in _netns() if n.startswith(names.netns_prefix(self.name))}

    def host_ids(self, count: int = 8) -> list[str]:
        return [names.host_id(self.name, k) for k in range(1, count + 1)]

    def assert_gone(self, before: Snapshot) -> None:
        """Nothing of the lab is left, and the machine looks as it did before it."""
        after = Snapshot.take()
        prefix = names.netns_prefix(self.name)
        assert not [n for n in after.netns if n.startswith(prefix)], after.netns
        assert after.root_links == before.root_links, "root namespace links changed"
        for host_id in self.host_ids():
            assert not (BPF_PINS / host_id).exists(), f"pins of {host_id} left"
        ours = {p for p in after.pins if any(h in p for h in self.host_ids())}
        assert not ours, ours
        assert not self.dir.exists(), f"{self.dir} left"
        alive = [p for p in self.pids if _is_lab_process(p, self)]
        assert not alive, f"processes left: {alive}"
        assert not procs.owned_by(self.dir)


def agent_status(host_id: str) -> dict[str, Any]:
    """The agent's own answer on its control socket (what `tessera flows` reads)."""
    from tessera.agent.control import agents_dir, request

    answer: dict[str, Any] = request(agents_dir() / f"{host_id}.sock", "status")
    return answer


def _is_lab_process(pid: int, lab: Lab) -> bool:
    """A recorded pid still running *as the lab's process* (pids get reused)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{procs.OWNER_ENV}={lab.dir}".encode() in environ.split(b"\0")


# -- a lab per test module, and the API calls every topology makes --------------------


@contextlib.contextmanager
def lab_up(*args: str, timeout: float = 180) -> Iterator[Lab]:
    """A lab brought up for a test module (`tessera lab up ARGS`), then taken down and
    checked to have left nothing behind, whatever the tests did."""
    require_agent()
    before = Snapshot.take()
    lab = Lab()
    try:
        lab.up(*args, timeout=timeout)
        yield lab
    finally:
        lab.down()
        lab.assert_gone(before)


def new_chain(lab: Lab, name: str, *rules: dict[str, Any]) -> str:
    """A chain with `rules` in this order; its id."""
    chain: str = lab.create("/chains", {"name": name})["id"]
    for position, fields in enumerate(rules, 1):
        lab.create(f"/chains/{chain}/rules", {"position": position, **fields})
    return chain


def replies_only(lab: Lab, vm: str) -> tuple[str, str]:
    """A conntrack firewall for `vm`'s port, as (inbound, outbound) filter chain ids:
    what `vm` sends is tracked; towards it only ARP and replies pass."""
    from_vm = new_chain(lab, f"from {vm}", {"type": "accept", "match_forward_flow": True})
    to_vm = new_chain(
        lab, f"to {vm}",
        {"type": "accept", "dl_type": 0x0806},
        {"type": "accept", "match_return_flow": True},
        {"type": "drop"},
    )  # fmt: skip
    return from_vm, to_vm


def firewall(lab: Lab, vm: str, port: str, *, wait: bool = False) -> None:
    """Put `replies_only` chains for `vm` on its `port`."""
    inbound, outbound = replies_only(lab, vm)
    update(
        lab, f"/ports/{port}", {"inbound_filter_id": inbound, "outbound_filter_id": outbound},
        wait=wait,
    )  # fmt: skip


def update(lab: Lab, path: str, fields: dict[str, Any], *, wait: bool = False) -> None:
    """PUT the object at `path` with `fields` changed (the API's PUT takes it whole).
    `wait`: with `?wait=true`, so that the change is in effect on every agent it concerns
    when this returns (docs/wait.md): the very next packet obeys it."""
    params = {"wait": "true"} if wait else None
    with lab.api() as client:
        current = client.get(path.lstrip("/")).json()
        response = client.put(path.lstrip("/"), json={**current, **fields}, params=params)
    assert response.status_code == 200, response.text


def add_route(lab: Lab, router: str, prefix: str, length: int, port: str) -> None:
    """A Normal route from anywhere to `prefix`/`length` out of `port`."""
    lab.create(
        f"/routers/{router}/routes",
        {
            "src_network_addr": "0.0.0.0", "src_network_length": 0,
            "dst_network_addr": prefix, "dst_network_length": length,
            "type": "Normal", "next_hop_port": port, "weight": 100,
        },
    )  # fmt: skip


def routed_lan(lab: Lab) -> tuple[str, str, str, str]:
    """Bridge `lan` (10.0.0.0/24) cabled to router `r`: gateway port 10.0.0.1 and an
    uplink port 203.0.113.1/24 (the "external" network, inside VM namespaces only), a
    route to each. Returns (lan, r, gateway port, uplink port)."""
    lan: str = lab.create("/bridges", {"name": "lan"})["id"]
    r: str = lab.create("/routers", {"name": "r"})["id"]
    ports = []
    for address, network in (("10.0.0.1", "10.0.0.0"), ("203.0.113.1", "203.0.113.0")):
        port: str = lab.create(
            f"/routers/{r}/ports",
            {"port_address": address, "network_address": network, "network_length": 24},
        )["id"]
        add_route(lab, r, network, 24, port)
        ports.append(port)
    gw, uplink = ports
    interior = lab.create(f"/bridges/{lan}/ports")["id"]
    with lab.api() as client:
        linked = client.post(f"ports/{interior}/link", json={"peer_id": gw})
    assert linked.status_code in (200, 201, 204), linked.text
    return lan, r, gw, uplink
