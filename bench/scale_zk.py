"""The scale bench's ZooKeeper: one standalone server or a three-member ensemble on this
machine, what it holds (`mntr`), what it costs (the JVMs' RSS), and its failures (the
leader killed, a server restarted).

Why both: a standalone server is what the latency figures need (one JVM, the least
noise on a shared machine); the failure test needs an ensemble, so that killing the
leader is a failure the cloud survives without losing its sessions. Every JVM is started
here and stopped by its pid (`ZookeeperServer.stop`, `EmbeddedZooKeeper.stop`).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from pathlib import Path

from tessera.cluster.embedded_zk import EmbeddedZooKeeper
from tessera.nsdb.zkserver import ZookeeperServer, four_letter

TICK_MS = 200  # elections and session checks in a fraction of a second
BOUND = 30.0  # start-up, election, rejoin


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mntr(host: str, port: int) -> dict[str, str]:
    """ZooKeeper's `mntr` as a dict (empty if the server does not answer)."""
    out: dict[str, str] = {}
    for line in four_letter(host, port, "mntr", timeout=5.0).splitlines():
        key, _, value = line.partition("\t")
        if value:
            out[key.strip()] = value.strip()
    return out


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports below the ephemeral range: a killed member must find
    its own ports free again when it restarts (see tests/integration/cluster)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = random.sample(range(max(1024, low - 12000), low), 300)
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in candidates:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"fewer than {count} free ports below {low}")


class BenchZk:
    """A standalone server (`members` == 1) or an ensemble of three, started now."""

    def __init__(self, directory: Path, members: int = 1, heap_mb: int = 2048) -> None:
        self.standalone: ZookeeperServer | None = None
        self.members: list[EmbeddedZooKeeper] = []
        if members == 1:
            self.standalone = ZookeeperServer(directory / "zk", heap_mb=heap_mb, tick_ms=TICK_MS)
            self.standalone.start(timeout=60.0)
            return
        ports = _free_ports(3 * members)
        triples = [ports[i : i + 3] for i in range(0, len(ports), 3)]
        peers = [f"127.0.0.1:{c}:{p}:{e}" for c, p, e in triples]
        self.members = [
            EmbeddedZooKeeper(
                i, peers, directory / f"zk{i}", triples[i - 1][0], tick_ms=TICK_MS,
                heap_mb=heap_mb, force_sync=False,
            )
            for i in range(1, members + 1)
        ]  # fmt: skip
        try:
            for member in self.members:
                member.start()
            for member in self.members:
                member.wait_serving(BOUND)
        except Exception:
            self.stop()
            raise

    @property
    def hosts(self) -> str:
        """The connect string (every member)."""
        if self.standalone is not None:
            return self.standalone.address
        return self.members[0].connect_string

    def stop(self) -> None:
        if self.standalone is not None:
            self.standalone.stop()
        for member in self.members:
            member.stop()

    # -- what it holds and costs --

    def _addresses(self) -> list[tuple[str, int, int | None]]:
        if self.standalone is not None:
            port = self.standalone.port
            assert port is not None
            return [(self.standalone.host, port, self.standalone.pid)]
        return [(m.host, m.client_port, m.pid) for m in self.members]

    def stats(self) -> dict[str, float]:
        """znodes, approximate data bytes and watches (from the leader or the
        standalone server), and the RSS of every JVM together."""
        out: dict[str, float] = {"rss": 0.0}
        for host, port, pid in self._addresses():
            if pid is not None:
                out["rss"] += rss_bytes(pid)
            m = mntr(host, port)
            if m.get("zk_server_state") in ("leader", "standalone"):
                for key in ("zk_znode_count", "zk_approximate_data_size", "zk_watch_count"):
                    out[key] = float(m.get(key, "nan"))
                out["connections"] = float(m.get("zk_num_alive_connections", "nan"))
        if self.members:  # watches and connections are per member: add the followers'
            total_w = total_c = 0.0
            for host, port, _pid in self._addresses():
                m = mntr(host, port)
                total_w += float(m.get("zk_watch_count", 0))
                total_c += float(m.get("zk_num_alive_connections", 0))
            out["zk_watch_count"], out["connections"] = total_w, total_c
        return out

    # -- failures --

    def leader(self) -> EmbeddedZooKeeper | None:
        return next((m for m in self.members if m.mode == "leader"), None)

    def kill_leader(self) -> EmbeddedZooKeeper:
        """SIGKILL the ensemble's leader, as a crash would; returns it (to restart)."""
        member = self.leader()
        if member is None:
            raise RuntimeError("the ensemble has no leader to kill")
        pid = member.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + BOUND
        while member.pid == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        return member

    def restart_standalone(self, down_for: float = 1.0) -> None:
        """Stop the single server, leave it down `down_for` seconds, start it again
        (same directory: same port and data, sessions included)."""
        assert self.standalone is not None
        self.standalone.stop()
        time.sleep(down_for)
        self.standalone.start(timeout=60.0)

    def wait_quorum(self) -> str:
        """Wait until the survivors (and any member restarted) serve; the modes."""
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            modes = [m.mode for m in self.members if m.alive]
            if modes and all(modes) and "leader" in modes:
                return ",".join(sorted(str(m) for m in modes))
            time.sleep(0.1)
        raise RuntimeError("the ZooKeeper ensemble did not elect a leader in time")
