"""Shared plumbing of the namespace benchmarks: namespaces that always go away,
processes stopped by pid, bounded iperf3 and ping, percentiles, the machine.

Why a module of its own: a benchmark that leaves namespaces, pins or iperf3 servers
behind on a shared machine poisons the next person's measurement, so the cleanup
rules live in one place. Every benchmark namespace is named ``<prefix>-<run id>-<role>``
and only this run's are removed; every process is started here and stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from tessera.datapath.ebpf.netns import enter_netns, run_in_netns
from tessera.lab.errors import LabError
from tessera.lab.sandbox import Sandbox, SandboxFactory


class BenchError(RuntimeError):
    """A setup or measurement step failed: one line for the user."""


# What a failed step raises: the bench's own errors, and the namespace helpers' (one line
# too), which the bench shares with the tests.
BENCH_ERRORS = (BenchError, LabError)


# --- namespaces ----------------------------------------------------------------------


Netns = Sandbox  # the bench's name for a namespace it made


class Lab:
    """This run's namespaces, processes and bpffs pins; ``close()`` removes them all."""

    def __init__(self, prefix: str) -> None:
        self._sandboxes = SandboxFactory(prefix)
        self.run_id = self._sandboxes.run_id
        self.prefix = self._sandboxes.prefix
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pins: list[Path] = []
        self.cleanups: list[Callable[[], None]] = []
        self.last: list[Callable[[], None]] = []  # after pins are gone (e.g. empty dirs)

    def netns(self, role: str) -> Netns:
        return self._sandboxes(role)

    def pin_dir(self, role: str) -> Path:
        path = Path("/sys/fs/bpf") / f"{self.prefix}-{role}"
        self.pins.append(path)
        return path

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def close(self) -> None:
        """Processes first (agents stop while their NSDB still answers), then the
        registered cleanups (newest first), namespaces, pins, and ``last``."""
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        with contextlib.suppress(LabError):
            self._sandboxes.cleanup()  # every one is tried; the first failure is raised
        for pin in self.pins:
            rm_pins(pin)
        for fn in self.last:
            with contextlib.suppress(Exception):
                fn()
        self.pins.clear()
        self.cleanups.clear()
        self.last.clear()


def rm_pins(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            rm_pins(child)
        with contextlib.suppress(OSError):
            path.rmdir()
    elif path.exists():
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP become SystemExit so that ``finally`` blocks clean up
    (Ctrl-C already raises KeyboardInterrupt)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- iperf3 ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    gbps: float
    retransmits: int
    cpu_sender: float  # % of all cores, as iperf3 reports it
    cpu_receiver: float


def _listening(ns: Netns, port: int) -> bool:
    out = ns.run("ss", "-Htln", f"sport = :{port}", check=False, timeout=5)
    return bool(out.stdout.strip())


def iperf3(
    lab: Lab, client: Netns, server: Netns, server_ip: str, seconds: float, port: int = 5201
) -> Throughput:
    """One TCP stream client -> server for ``seconds`` (+1 s omitted for slow start).

    A fresh one-off server per measurement: a wedged test cannot leak into the next.
    Both ends are bounded in time; the server is stopped by pid whatever happens.
    """
    srv = lab.popen(
        server.argv("iperf3", "-s", "-1", "-B", server_ip, "-p", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not _listening(server, port):
            if srv.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"iperf3 server in {server.name} did not start")
            time.sleep(0.05)
        secs = max(1, round(seconds))
        argv = client.argv(
            "iperf3",
            "-c",
            server_ip,
            "-p",
            str(port),
            "-t",
            str(secs),
            "-O",
            "1",
            "-P",
            "1",
            "-J",
            "--connect-timeout",
            "3000",
        )
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 20)
        except subprocess.TimeoutExpired:
            raise BenchError(f"iperf3 to {server_ip} did not finish in {secs + 20} s") from None
        try:
            doc = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise BenchError(f"iperf3 to {server_ip}: {proc.stderr.strip()[:200]}") from None
        if "error" in doc:
            raise BenchError(f"iperf3 to {server_ip}: {doc['error']}")
        end = doc["end"]
        cpu = end.get("cpu_utilization_percent", {})
        return Throughput(
            gbps=end["sum_received"]["bits_per_second"] / 1e9,
            retransmits=int(end["sum_sent"].get("retransmits", 0)),
            cpu_sender=float(cpu.get("host_total", 0.0)),
            cpu_receiver=float(cpu.get("remote_total", 0.0)),
        )
    finally:
        lab.stop(srv)


# --- ping --------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Pinger:
    """ICMP echo from inside a namespace through one raw socket.

    In-process rather than ``ping`` per sample: no process start in the loop, and
    the timestamp is taken right around sendto/recv, so first-packet and steady
    samples carry the same (small) Python overhead.
    """

    def __init__(self, ns: Netns) -> None:
        self.sock = run_in_netns(
            ns.path, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        )
        self.ident = secrets.randbelow(0xFFFF)
        self.seq = 0

    def ping(self, dst: str, timeout: float = 1.0) -> float | None:
        """RTT in seconds, or None after ``timeout``."""
        self.seq = (self.seq + 1) & 0xFFFF
        body = struct.pack("!BBHHH", 8, 0, 0, self.ident, self.seq) + b"tessera-bench" * 4
        body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
        start = time.perf_counter()
        self.sock.sendto(body, (dst, 0))
        deadline = start + timeout
        while (left := deadline - time.perf_counter()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                break
            now = time.perf_counter()
            ihl = (data[0] & 0x0F) * 4
            kind, _c, _s, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
            if kind == 0 and rid == self.ident and rseq == self.seq:
                return now - start
        return None

    def close(self) -> None:
        self.sock.close()


def rtts(pinger: Pinger, dst: str, count: int, gap: float = 0.002) -> tuple[list[float], int]:
    """``count`` echoes ``gap`` apart: (RTTs in seconds, number lost)."""
    got: list[float] = []
    lost = 0
    for _ in range(count):
        r = pinger.ping(dst, timeout=0.5)
        if r is None:
            lost += 1
        else:
            got.append(r)
        time.sleep(gap)
    return got, lost


# --- statistics and output ---------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    """One line of the table: a figure, its same-run baseline, and their ratio."""

    section: str
    metric: str
    baseline_name: str
    baseline: float | None
    tessera: float | None
    unit: str
    goal: str = ""
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)
    paired_ratio: float | None = None  # median of per-pair ratios, when pairs exist

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.baseline is None or self.tessera is None or self.baseline == 0:
            return None
        return self.tessera / self.baseline

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        return cls(
            d["section"],
            d["metric"],
            d["baseline_name"],
            d["baseline"],
            d["tessera"],
            d["unit"],
            d.get("goal", ""),
            d.get("note", ""),
            d.get("samples", {}),
            d.get("paired_ratio"),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; NaN (a percentile of no samples) becomes null."""

        def num(v: float | None) -> float | None:
            return None if v is None or v != v else v

        return {
            "section": self.section,
            "metric": self.metric,
            "baseline_name": self.baseline_name,
            "baseline": num(self.baseline),
            "tessera": num(self.tessera),
            "unit": self.unit,
            "ratio": num(self.ratio),
            "paired_ratio": num(self.paired_ratio),
            "goal": self.goal,
            "note": self.note,
            "samples": self.samples,
        }


def fmt(v: float | None, unit: str) -> str:
    if v is None or v != v:  # None or NaN
        return "n/a"
    if unit in ("Gbit/s",):
        return f"{v:.2f} {unit}"
    if unit == "ms":
        return f"{v:.3f} ms"
    if unit == "/s":
        return f"{v:,.0f}/s"
    return f"{v:g} {unit}"


def _cells(r: Row) -> tuple[str, str, str, str, str, str]:
    """One row's cells (metric, baseline, tessera, ratio, goal, note), for both renderings."""
    base = f"{fmt(r.baseline, r.unit)} ({r.baseline_name})" if r.baseline_name else "-"
    if r.baseline_name and r.baseline is None and r.tessera is None:
        base = "n/a"
    ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
    return (f"{r.section}: {r.metric}", base, fmt(r.tessera, r.unit), ratio, r.goal, r.note)


def render(rows: Sequence[Row]) -> str:
    header = ("metric", "baseline", "tessera", "ratio", "goal", "note")
    lines = [_cells(r) for r in rows]
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip() for x in lines]
    return "\n".join(out)


def render_markdown(rows: Sequence[Row]) -> str:
    out = [
        "| metric | baseline (same run) | tessera | ratio | goal | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(out)


# --- the machine ---------------------------------------------------------------------


def loadavg() -> tuple[float, float, float]:
    a, b, c = os.getloadavg()
    return (round(a, 2), round(b, 2), round(c, 2))


def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """Share of all cores busy over ``seconds`` (from /proc/stat): other users' load."""

    def snap() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return idle, sum(fields)

    i0, t0 = snap()
    time.sleep(seconds)
    i1, t1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "loadavg_start": loadavg(),
    }


class Ticker(threading.Thread):
    """Samples the load average while the bench runs (to report the noise)."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.every + 1)


# --- services reached through a namespace ----------------------------------------------


class NetnsHttp:
    """JSON over HTTP to a server that lives inside ``ns``.

    One worker thread enters the namespace once and owns a keep-alive client, so every
    socket is created there and a request costs one HTTP round trip (no client set-up
    or TCP handshake per call, which would otherwise dominate timings); the bench itself
    never joins a namespace or touches the root namespace's routes.
    """

    def __init__(self, ns: Netns, base_url: str, timeout: float = 10.0) -> None:
        import httpx

        self.ns = ns
        self.base_url = base_url.rstrip("/")
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=enter_netns, initargs=(ns.path,))
        self._client: httpx.Client = self._pool.submit(
            lambda: httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)
        ).result()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        try:
            resp = self._pool.submit(
                lambda: self._client.request(method, self.base_url + path, json=body)
            ).result()
        except httpx.HTTPError as e:
            raise BenchError(f"{method} {path}: {e}") from None
        if resp.status_code >= 400:
            raise BenchError(f"{method} {path}: HTTP {resp.status_code} {resp.text[:200]}")
        return resp.json() if resp.content else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.submit(self._client.close).result(timeout=5)
        self._pool.shutdown(wait=False)


def wait_for(
    what: str,
    probe: Callable[[], bool],
    timeout: float,
    every: float = 0.1,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``probe`` until true; its BenchErrors mean "not yet". ``check`` runs first
    each time and its errors end the wait (e.g. the process being waited for died)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        try:
            if probe():
                return
        except BENCH_ERRORS:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(every)


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
