"""Cost of the fast path's control and packet operations, on this machine.

    sudo .venv/bin/python bench/ebpf_map.py [--flows N]

Control path (Python -> kernel map): one raw bpf(2) update, FlowMap.install
(mask slot + key masking + action encoding + syscall), lookup, delete, the
walk of every flow under the agent's sweep (batched read + decoding the
actions), and -- as the baseline the design warns about -- one
``bpftool map update`` process.  Packet path: BPF_PROG_TEST_RUN of
port_ingress (average ns per packet over many repeats) for a hit found in
mask slot 1, 4, 8 and 16 -- the price of tuple-space search per extra mask --
and for a miss scanning 16 masks.

Loads a private copy of the programs under /sys/fs/bpf/tst-bench-* and
removes it at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from tessera.datapath.base import Action, DecTtl, Output, SetEthDst, SetEthSrc
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.actions import Device
from tessera.datapath.ebpf.layout import KEY_FIELDS, FlowKey, FlowLookupKey, FlowValue
from tessera.datapath.ebpf.loader import EbpfFastPath
from tessera.packet.addr import mac_from_str


def frame(dst_mac: bytes, ttl: int = 64) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, ttl, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 1, 2])
    )
    return (
        dst_mac
        + bytes.fromhex("02000000000a")
        + b"\x08\x00"
        + ip
        + struct.pack("!HHHH", 1000, 2000, 8, 0)
    )


def per_op_us(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=200000, help="test-run repeats per packet figure")
    args = ap.parse_args()
    pin = Path("/sys/fs/bpf") / f"tst-bench-{secrets.token_hex(3)}"
    cache = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    fp = EbpfFastPath(pin, cache_dir=cache)
    rows: list[tuple[str, str]] = []
    try:
        fp.load()
        m = fp.maps
        n = args.flows
        mask = FlowKey.mask_of(["in_port", "eth_dst", "eth_type", "ip_dst"])
        keys = [
            FlowKey.make(
                in_port=1,
                eth_dst=bytes([2, 0, 0, 1, i >> 8 & 255, i & 255]),
                eth_type=0x800,
                ip_dst=i,
            )
            for i in range(n)
        ]
        acts: list[Action] = [
            SetEthSrc(mac_from_str("02:00:00:00:ee:01")),
            SetEthDst(mac_from_str("02:00:00:00:00:0b")),
            DecTtl(),
            Output(1),
        ]
        devices: dict[int, Device] = {1: (3, True)}  # port 1: ifindex 3, redirect_peer

        lk, val, fd = FlowLookupKey(), FlowValue(), m.fd("flows")

        def raw_update(i: int) -> None:
            lk.mask_index = 15
            lk.key.ip_dst = i
            bpf.map_update(fd, lk, val)

        rows.append(
            ("bpf(2) MAP_UPDATE_ELEM, raw (flows map)", f"{per_op_us(n, raw_update):.2f} us")
        )
        rows.append(
            (
                "bpf(2) MAP_LOOKUP_ELEM, raw",
                f"{per_op_us(n, lambda i: bpf.map_lookup(fd, lk, val)):.2f} us",
            )
        )
        m.flows.clear()
        rows.append(
            (
                "FlowMap.install (mask+encode+syscall)",
                f"{per_op_us(n, lambda i: m.flows.install(keys[i], mask, acts, devices)):.2f} us",
            )
        )
        rows.append(
            (
                "FlowMap.get (lookup)",
                f"{per_op_us(n, lambda i: m.flows.get(keys[i], mask)):.2f} us",
            )
        )
        t = time.perf_counter()
        entries = m.flows.entries()
        rows.append(
            (
                f"FlowMap.entries, {n} flows (batched walk)",
                f"{(time.perf_counter() - t) * 1e3:.1f} ms ({len(entries)} read)",
            )
        )
        ports = {3: 1}
        t = time.perf_counter()
        decoded = sum(1 for e in entries if e.actions(ports) is not None)
        rows.append(
            (
                f"decode the actions of {n} flows",
                f"{(time.perf_counter() - t) * 1e3:.1f} ms ({decoded} decoded)",
            )
        )
        rows.append(
            (
                "FlowMap.delete",
                f"{per_op_us(n // 2, lambda i: m.flows.delete(keys[i], mask)):.2f} us",
            )
        )

        bpftool = shutil.which("bpftool")
        if bpftool:
            key_hex = bytes(lk).hex(" ").split()
            val_hex = bytes(val).hex(" ").split()
            cmd = [
                bpftool,
                "map",
                "update",
                "pinned",
                str(pin / "maps" / "flows"),
                "key",
                "hex",
                *key_hex,
                "value",
                "hex",
                *val_hex,
            ]
            k = 20
            t = time.perf_counter()
            for _ in range(k):
                subprocess.run(cmd, check=True, capture_output=True)
            rows.append(
                (
                    "bpftool map update (one process)",
                    f"{(time.perf_counter() - t) / k * 1e6:.0f} us",
                )
            )

        # Packet path: hit in slot s (slots before it hold masks with no matching flow).
        m.flows.clear()
        m.ports.set(1, 1)
        prog = fp.prog_fd("port_ingress")
        try:
            dst = bytes.fromhex("02000000000b")
            pkt = frame(dst)
            for slots in (1, 4, 8, 16):
                m.flows.clear()
                for s in range(slots - 1):  # decoy masks, each with one flow that does not match
                    decoy = FlowKey.mask_of(["in_port", KEY_FIELDS[1 + s % 12], "tp_src"])
                    m.flows.install(FlowKey.make(in_port=1, tp_src=9), decoy, [Output(1)], devices)
                m.flows.install(
                    FlowKey.make(in_port=1, eth_dst=dst),
                    FlowKey.mask_of(["in_port", "eth_dst"]),
                    acts,
                    devices,
                )
                res = bpf.prog_test_run(prog, pkt, repeat=args.repeat)
                rows.append(
                    (
                        f"packet: hit in mask slot {slots} (MAC x2, TTL, redirect_peer)",
                        f"{res.duration_ns} ns",
                    )
                )
            m.flows.masks.free(m.flows.masks.index_of(FlowKey.mask_of(["in_port", "eth_dst"])) or 0)
            res = bpf.prog_test_run(prog, frame(bytes.fromhex("02000000000c")), repeat=args.repeat)
            rows.append(
                ("packet: miss after scanning all masks (tag + redirect)", f"{res.duration_ns} ns")
            )
        finally:
            os.close(prog)
    finally:
        fp.purge()
        shutil.rmtree(cache, ignore_errors=True)
    width = max(len(a) for a, _ in rows)
    print(f"{'operation':<{width}}  cost")
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    _ = ctypes  # keep the import for readers poking at lk/val


if __name__ == "__main__":
    main()
