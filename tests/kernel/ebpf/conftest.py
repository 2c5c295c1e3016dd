"""Fixtures for the eBPF fast path tests.

Everything here needs root and the BPF toolchain; without them the tests
skip (they never half-run).  Each fixture removes what it made -- pinned
objects, namespaces and the devices inside them -- even when a test fails.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.ebpf import remove_pins, toolchain_missing
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.layout import FlowKey
from tessera.datapath.ebpf.loader import (
    BPFFS,
    SOURCE_DIR,
    EbpfFastPath,
    compile_object,
    ensure_bpffs,
)
from tessera.datapath.ebpf.maps import FastPathMaps
from tessera.datapath.ebpf.netns import run_in_netns
from tessera.lab.sandbox import Sandbox, SandboxFactory

from .nets import PREFIX


@pytest.fixture(scope="session")
def bpf_ready() -> None:
    reason = toolchain_missing()
    if reason:
        pytest.skip(reason)
    ensure_bpffs()


@pytest.fixture(scope="session")
def obj_cache(bpf_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compiled objects are cached per test session (compile once)."""
    return tmp_path_factory.mktemp("bpf-obj")


@pytest.fixture
def pin_dir(bpf_ready: None) -> Iterator[Path]:
    """A fresh pin directory on bpffs, removed afterwards."""
    path = BPFFS / f"tst-{secrets.token_hex(4)}"
    yield path
    remove_pins(path)


@pytest.fixture(scope="module")
def module_fastpath(bpf_ready: None, obj_cache: Path) -> Iterator[EbpfFastPath]:
    path = BPFFS / f"tst-{secrets.token_hex(4)}"
    fp = EbpfFastPath(path, cache_dir=obj_cache)
    try:
        fp.load()
        yield fp
    finally:
        fp.close()
        remove_pins(path)


@pytest.fixture
def fastpath(module_fastpath: EbpfFastPath) -> EbpfFastPath:
    """The module's fast path with empty flows, ports, VNIs, config, stats."""
    m = module_fastpath.maps
    m.flows.clear()
    for ifindex in m.ports.items():
        m.ports.delete(ifindex)
    for vni in m.vni_ports.items():
        m.vni_ports.delete(vni)
    m.config.set(miss_ifindex=0, vxlan_ifindex=0)
    m.stats.reset()
    return module_fastpath


@pytest.fixture
def netns_factory(bpf_ready: None) -> Iterator[SandboxFactory]:
    factory = SandboxFactory(PREFIX)
    try:
        yield factory
    finally:
        factory.cleanup()


# --- the probe harness (probe.c = the program + recording probes) ---------------

PROBE_SRC = Path(__file__).with_name("probe.c")
TEST_PORT = 7  # in_port of test frames: the ports map maps lo (ifindex 1) to it


class ProbeOut(ctypes.Structure):
    _fields_ = [
        ("rc", ctypes.c_int32),
        ("vlan_present", ctypes.c_uint32),
        ("vlan_tci", ctypes.c_uint32),
        ("tunnel_ok", ctypes.c_uint32),
        ("tunnel_id", ctypes.c_uint32),
        ("remote_ipv4", ctypes.c_uint32),
        ("tunnel_ttl", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", FlowKey),
        ("l3_off", ctypes.c_uint32),
    ]


@dataclass
class Probe:
    """Programs of probe.o, run with BPF_PROG_TEST_RUN inside ``ns``."""

    maps: FastPathMaps
    progs: dict[str, int]
    probe_fd: int
    ns: Sandbox
    dummy_ifindex: int

    def run(self, prog: str, frame: bytes, *, mark: int = 0) -> bpf.TestRunResult:
        zero = ctypes.c_uint32(0)
        bpf.map_update(self.probe_fd, zero, ProbeOut())
        ctx = struct.pack("=III", 0, 0, mark)  # __sk_buff: len, pkt_type, mark
        fd = self.progs[prog]
        return run_in_netns(self.ns.path, lambda: bpf.prog_test_run(fd, frame, ctx=ctx))

    def out(self) -> ProbeOut:
        out = ProbeOut()
        bpf.map_lookup(self.probe_fd, ctypes.c_uint32(0), out)
        return out


@pytest.fixture(scope="module")
def probe_module(
    bpf_ready: None, obj_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Probe]:
    obj = compile_object(SOURCE_DIR, obj_cache, main=PROBE_SRC)
    pins = BPFFS / f"tst-{secrets.token_hex(4)}"
    factory = SandboxFactory(PREFIX)
    progs: dict[str, int] = {}
    maps: FastPathMaps | None = None
    probe_fd = -1
    try:
        pins.mkdir()
        subprocess.run(
            [
                "bpftool",
                "prog",
                "loadall",
                str(obj),
                str(pins / "progs"),
                "pinmaps",
                str(pins / "maps"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        maps = FastPathMaps.open(pins / "maps")
        probe_fd = bpf.obj_get(pins / "maps" / "probe")
        for p in ("probe_port_ingress", "probe_inject", "probe_key"):
            progs[p] = bpf.obj_get(pins / "progs" / p)
        ns = factory("run")
        # A sink for clones (no dummy driver on every kernel): a veth pair.
        ns.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ns.ip("link", "set", "d0", "up")
        ns.ip("link", "set", "d1", "up")
        yield Probe(maps, progs, probe_fd, ns, ns.ifindex("d0"))
    finally:
        for fd in [*progs.values(), probe_fd]:
            if fd >= 0:
                os.close(fd)
        if maps is not None:
            maps.close()
        factory.cleanup()
        remove_pins(pins)


@pytest.fixture
def probe(probe_module: Probe) -> Probe:
    """Empty flows/stats, lo mapped to TEST_PORT, a miss device configured."""
    m = probe_module.maps
    m.flows.clear()
    for ifindex in m.ports.items():
        m.ports.delete(ifindex)
    m.ports.set(1, TEST_PORT)
    m.config.set(miss_ifindex=probe_module.dummy_ifindex, vxlan_ifindex=0)
    m.stats.reset()
    return probe_module
