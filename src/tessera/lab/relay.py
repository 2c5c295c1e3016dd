"""The lab's NSDB relay: ZooKeeper on 127.0.0.1 of every host namespace.

Agents run inside their host namespaces, where the root namespace's 127.0.0.1 (where the
lab's ZooKeeper listens) is out of reach, and the lab must not add addresses or routes
to the root namespace to bridge the gap. This one asyncio process does it without any:
for each host namespace it makes a listening socket *inside* that namespace (a thread
enters it with setns(2), binds 127.0.0.1:2181, and leaves; a socket keeps the namespace
it was made in), and forwards every connection to ZooKeeper from the root namespace,
where the process itself stays. For an NSDB of several servers, server i is relayed on
port 2181 + i.

    python -m tessera.lab.relay CONFIG.json

CONFIG.json: {"upstreams": [["127.0.0.1", 34567]], "port": 2181,
"namespaces": ["tsr-default-h1", ...], "mirrored": [["127.0.0.2", 9042], ...]}.
`mirrored` (optional): addresses relayed as themselves, ADDR:PORT inside each namespace
to ADDR:PORT of the root namespace (the lab's Cassandra nodes: the driver connects to
the addresses the nodes announce, so they must be the same on both sides). SIGHUP (and
a rescan every few seconds) re-reads it: listeners follow namespaces that appear,
vanish or are remade.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from tessera.lab import netns

log = logging.getLogger("tessera.lab.relay")

RESCAN = 3.0  # seconds between config rescans without a SIGHUP
CONNECT_TIMEOUT = 5.0
CHUNK = 1 << 16


@dataclass(frozen=True)
class RelayConfig:
    upstreams: tuple[tuple[str, int], ...]
    port: int
    namespaces: tuple[str, ...]
    mirrored: tuple[tuple[str, int], ...] = ()

    @classmethod
    def read(cls, path: Path) -> RelayConfig:
        data = json.loads(path.read_text())
        return cls(
            upstreams=tuple((str(h), int(p)) for h, p in data["upstreams"]),
            port=int(data["port"]),
            namespaces=tuple(str(n) for n in data["namespaces"]),
            mirrored=tuple((str(h), int(p)) for h, p in data.get("mirrored", [])),
        )

    def write(self, path: Path) -> None:
        from tessera.lab.state import write_json

        write_json(
            path,
            {
                "upstreams": [list(u) for u in self.upstreams],
                "port": self.port,
                "namespaces": list(self.namespaces),
                "mirrored": [list(m) for m in self.mirrored],
            },
        )


def listen_socket(namespace: str, port: int, address: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on `address`:`port` inside `namespace`."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    return netns.in_netns(namespace, make)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass


class Relay:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        # (namespace, address, port) -> (namespace inode when bound, server)
        self.servers: dict[tuple[str, str, int], tuple[int, asyncio.Server]] = {}
        self.connections: set[asyncio.Task[None]] = set()
        self._reloading = asyncio.Lock()

    async def reload(self) -> None:
        async with self._reloading:
            try:
                config = RelayConfig.read(self.config_path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("cannot read %s: %s (listeners unchanged)", self.config_path, exc)
                return
            wanted: dict[tuple[str, str, int], tuple[str, int]] = {}
            for ns in config.namespaces:
                for i, upstream in enumerate(config.upstreams):
                    wanted[(ns, "127.0.0.1", config.port + i)] = upstream
                for address, port in config.mirrored:
                    wanted[(ns, address, port)] = (address, port)
            for key, (ino, server) in list(self.servers.items()):
                if key not in wanted or netns.inode(key[0]) != ino:
                    server.close()
                    del self.servers[key]
                    log.info("stopped relaying in %s on %s:%d", *key)
            for key, upstream in wanted.items():
                if key in self.servers:
                    continue
                await self._listen(key, upstream)

    async def _listen(self, key: tuple[str, str, int], upstream: tuple[str, int]) -> None:
        ns, address, port = key
        ino = netns.inode(ns)
        if ino is None:
            return  # not made yet: the next rescan will see it
        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(None, listen_socket, ns, port, address)
        except OSError as exc:
            log.error("cannot listen on %s:%d in %s: %s", address, port, ns, exc)
            return

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._forward(reader, writer, upstream)

        server = await asyncio.start_server(handle, sock=sock)
        self.servers[key] = (ino, server)
        log.info("relaying %s:%d in %s to %s:%d", address, port, ns, *upstream)

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[str, int],
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*upstream), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                log.warning("cannot reach %s:%d: %s", *upstream, exc)
                return
            try:
                # Either side closing ends the connection: ZooKeeper's protocol has no
                # use for half-closed streams.
                _done, pending = await asyncio.wait(
                    [
                        asyncio.ensure_future(_pipe(reader, up_writer)),
                        asyncio.ensure_future(_pipe(up_reader, writer)),
                    ],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for p in pending:
                    p.cancel()
            finally:
                up_writer.close()
        finally:
            writer.close()
            if task is not None:
                self.connections.discard(task)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        wake = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, wake.set)
        await self.reload()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_either(stop, wake), RESCAN)
            wake.clear()
            if not stop.is_set():
                await self.reload()
        for _ino, server in self.servers.values():
            server.close()
        for task in list(self.connections):
            task.cancel()
        log.info("relay stopped")


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tessera.lab.relay CONFIG.json", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(Relay(Path(args[0])).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
