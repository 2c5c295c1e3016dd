"""For tests that talk to the eBPF maps and pins directly.

`DEVICES`/`PORTS`: local port n is the device of ifindex n. The program redirects by
ifindex and numbering ports is the agent's business, so tests that write flows straight
into the maps take the simplest numbering there is. `toolchain_missing` is the skip
reason of every test that loads a program; `remove_pins` removes a test's pin directory,
whatever it holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tessera.datapath.base import MAX_PORT_NO
from tessera.datapath.ebpf.actions import Device
from tessera.lab.sandbox import unavailable

#: port -> (ifindex, is a veth) for `tessera.datapath.ebpf.actions.encode`
DEVICES: dict[int, Device] = {n: (n, False) for n in range(1, MAX_PORT_NO + 1)}
#: ifindex -> port, to decode what `DEVICES` encoded
PORTS: dict[int, int] = {n: n for n in range(1, MAX_PORT_NO + 1)}


def toolchain_missing() -> str | None:
    """Why eBPF programs cannot be built and loaded here (a skip reason), None if they can:
    root and namespaces, then clang to compile, bpftool to load, tc to attach."""
    if (reason := unavailable()) is not None:
        return reason
    for tool in ("clang", "bpftool", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def remove_pins(path: Path) -> None:
    """Remove a pin tree on bpffs (a directory of pinned maps and programs, or one pin);
    nothing there is fine."""
    if path.is_dir():
        for child in path.iterdir():
            remove_pins(child)
        path.rmdir()
    elif path.exists():
        path.unlink()
