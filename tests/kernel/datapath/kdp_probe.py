"""The kernel program's key extraction, run on one frame with BPF_PROG_TEST_RUN.

`key_probe.c` is the datapath program plus a probe that stores the `struct flow_key`
extract_key() computed; it is compiled like the program (cached), loaded with bpftool
into a pin directory of its own and run inside a sandbox namespace, so nothing of it
touches the root namespace or outlives `close()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import struct
import subprocess
from pathlib import Path

from support.ebpf import remove_pins
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.layout import FlowKey
from tessera.datapath.ebpf.loader import BPFFS, SOURCE_DIR, compile_object, ensure_bpffs
from tessera.datapath.ebpf.netns import run_in_netns
from tessera.lab.sandbox import SandboxFactory

PROBE_SRC = Path(__file__).with_name("key_probe.c")
PROBE_PORT = 7  # KEY_PROBE_PORT in key_probe.c: the in_port of every probed key


class KeyProbe:
    def __init__(self, obj_cache: Path) -> None:
        ensure_bpffs()
        obj = compile_object(SOURCE_DIR, obj_cache, main=PROBE_SRC)
        self.pins = BPFFS / f"tsk-probe-{secrets.token_hex(4)}"
        self.factory = SandboxFactory("tsk")
        self.prog_fd = self.map_fd = -1
        try:
            self.pins.mkdir()
            subprocess.run(
                ["bpftool", "prog", "loadall", str(obj), str(self.pins / "progs"),
                 "pinmaps", str(self.pins / "maps")],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            self.prog_fd = bpf.obj_get(self.pins / "progs" / "key_probe")
            self.map_fd = bpf.obj_get(self.pins / "maps" / "key_out")
            self.ns = self.factory("probe")
        except BaseException:
            self.close()
            raise

    def key(self, frame: bytes, *, tag_in_metadata: int = 0) -> FlowKey:
        """The key of `frame`; `tag_in_metadata` a VID the kernel holds out of band."""
        ctx = struct.pack("=III", 0, 0, tag_in_metadata)  # __sk_buff: len, pkt_type, mark
        bpf.map_update(self.map_fd, ctypes.c_uint32(0), FlowKey())
        run_in_netns(self.ns.path, lambda: bpf.prog_test_run(self.prog_fd, frame, ctx=ctx))
        out = FlowKey()
        bpf.map_lookup(self.map_fd, ctypes.c_uint32(0), out)
        return out

    def close(self) -> None:
        for fd in (self.prog_fd, self.map_fd):
            if fd >= 0:
                os.close(fd)
        self.prog_fd = self.map_fd = -1
        self.factory.cleanup()
        with contextlib.suppress(FileNotFoundError):
            remove_pins(self.pins)
