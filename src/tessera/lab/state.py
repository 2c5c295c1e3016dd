"""What a lab remembers between commands: its state file, its directory, its lock.

`tessera lab up` returns while the lab keeps running, and every later command (`vm add`,
`status`, `down`...) is another process: all they share is the lab's directory,
`$TESSERA_LAB_DIR/<name>/` (default /run/tessera/lab/<name>/: /run empties at boot, like
the namespaces the lab makes). It holds `lab.json` (this module), the pid and log of every
process the lab started, ZooKeeper's data and the agents' state directory. `lab.json` is
written *before* each thing it describes is made, so that `down` can undo a lab that was
only half made.

Commands that change a lab hold one lock (flock on the labs directory) for their whole
run: they are rare and short, and one lock keeps two `up`s from picking the same
underlay index.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from tessera.lab import names
from tessera.lab.errors import LabError

LAB_DIR_ENV = "TESSERA_LAB_DIR"
DEFAULT_LAB_DIR = Path("/run/tessera/lab")
STATE_FILE = "lab.json"
LOCK_TIMEOUT = 180.0  # an `up` of many hosts may hold the lock this long


def labs_root() -> Path:
    return Path(os.environ.get(LAB_DIR_ENV) or DEFAULT_LAB_DIR)


class HostState(BaseModel):
    name: str
    index: int
    host_id: str
    underlay_ip: str


class VmState(BaseModel):
    name: str
    host: str
    port_id: str
    mac: str | None = None
    ip: str | None = None
    gw: str | None = None
    dhcp: bool = False
    mtu: int | None = None
    offload: bool = True
    # A VM placed by the scheduler (`vm add --schedule`): its placement consumer (the
    # allocation `vm del` frees) and what it asked for; None for a VM on a named host.
    consumer: str | None = None
    vcpus: int | None = None
    ram_mb: int | None = None


class LabState(BaseModel):
    name: str
    index: int
    datapath: str = "ebpf"
    # The NSDB as the root namespace sees it, and whether the lab runs it.
    nsdb_url: str = ""
    own_nsdb: bool = True
    api_port: int | None = None
    # The Neutron v2.0 API, served by the API process (node 1) too; None in state files
    # written before the lab started it.
    neutron_port: int | None = None
    # Cluster nodes: the API process is node 1; nodes 2..N run `tessera cluster serve`.
    cluster_nodes: int = 1
    # Whether the cluster nodes run the NSDB themselves (each an embedded ZooKeeper
    # member, node 1 included); nsdb_url is then their ensemble's connect string.
    embedded_zookeeper: bool = False
    # Cassandra nodes the lab runs (`lab up --cassandra N`; 0: none), on 127.0.I.2.. .
    cassandra_nodes: int = 0
    # What each host reports to placement (with Cassandra): VCPU and MEMORY_MB totals
    # (`lab up --host-vcpus/--host-ram`); None: derived from this machine (lab.placement).
    host_vcpus: int | None = None
    host_ram_mb: int | None = None
    tunnel_zone_id: str | None = None
    hosts: list[HostState] = Field(default_factory=list)
    vms: dict[str, VmState] = Field(default_factory=dict)

    # -- derived ------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return lab_dir(self.name)

    @property
    def api_url(self) -> str | None:
        return f"http://127.0.0.1:{self.api_port}/api/v1" if self.api_port else None

    @property
    def neutron_url(self) -> str | None:
        return f"http://127.0.0.1:{self.neutron_port}" if self.neutron_port else None

    @property
    def nsdb_root(self) -> str:
        return self.nsdb_url.partition("://")[2].partition("/")[2] or "tessera"

    def host(self, name: str) -> HostState:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise LabError(f"lab {self.name} has no host '{name}' (hosts: {known})")

    def netns(self, what: str) -> str:
        return names.netns(self.name, what)

    def pid_file(self, process: str) -> Path:
        """`process` is `api`, `relay` or `agent-hK`."""
        return self.dir / f"{process}.pid"

    def log_file(self, process: str) -> Path:
        return self.dir / f"{process}.log"

    # -- files --------------------------------------------------------------------------

    def save(self) -> None:
        """Write atomically: a reader never sees half a file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)


def lab_dir(name: str) -> Path:
    return labs_root() / name


def load(name: str) -> LabState | None:
    """The lab's state, None when it has none (never made, or already taken down)."""
    path = lab_dir(name) / STATE_FILE
    try:
        return LabState.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as exc:
        raise LabError(
            f"the state of lab {name} ({path}) is unreadable: {_short(exc)}; "
            f"`tessera lab down --name {name}` removes what the lab made"
        ) from None


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()
    return text[0] if text else type(exc).__name__


def _netns_labs() -> set[str]:
    """Labs that have an underlay or host namespace, state file or not."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for entry in os.listdir("/run/netns"):
            if not entry.startswith(names.NS_PREFIX):
                continue
            lab, sep, what = entry[len(names.NS_PREFIX) :].partition("-")
            if sep and (what == names.UNDERLAY or names.host_index(what) is not None):
                with contextlib.suppress(LabError):
                    found.add(names.check_lab_name(lab))
    return found


def existing_labs() -> list[str]:
    """Every lab that has a state directory or namespaces on this machine."""
    found = _netns_labs()
    with contextlib.suppress(OSError):
        for entry in labs_root().iterdir():
            if (entry / STATE_FILE).is_file():
                found.add(entry.name)
    return sorted(found)


def resolve(name: str | None) -> LabState:
    """The lab `--name` names, else the only one there is."""
    labs = existing_labs()
    if name is not None:
        names.check_lab_name(name)
        state = load(name)
        if state is None:
            running = ", ".join(labs) or "none"
            raise LabError(f"no lab named '{name}' is running (running: {running})")
        return state
    if not labs:
        raise LabError("no lab is running (start one with `tessera lab up`)")
    if len(labs) > 1:
        raise LabError(f"several labs are running ({', '.join(labs)}): choose one with --name")
    state = load(labs[0])
    if state is None:
        raise LabError(
            f"lab {labs[0]} has namespaces but no state: "
            f"`tessera lab down --name {labs[0]}` removes them"
        )
    return state


def free_index() -> int:
    """The lowest underlay index no other lab uses."""
    used: set[int] = set()
    for lab in existing_labs():
        with contextlib.suppress(LabError):
            state = load(lab)
            if state is not None:
                used.add(state.index)
    for index in range(names.MAX_LABS):
        if index not in used:
            return index
    raise LabError(f"all {names.MAX_LABS} lab underlays are in use: take a lab down first")


@contextlib.contextmanager
def locked(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the labs lock. The lock is the labs directory itself, which `down` removes
    when it empties: a waiter that wakes up on a removed directory tries again."""
    deadline = time.monotonic() + timeout
    root = labs_root()
    while True:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() > deadline:
                    raise LabError(
                        f"another `tessera lab` command has held {root} for {timeout:g}s; "
                        "try again when it is done"
                    )
                time.sleep(0.1)
            if os.fstat(fd).st_nlink == 0:
                continue  # removed while we waited: lock the new one
            yield
            return
        finally:
            os.close(fd)


def prune_empty_dirs(*also: Path) -> None:
    """Remove the labs directory when no lab is left in it, then each of `also` that is
    empty, in order (directories the lab's processes made). Call with the lock held."""
    for directory in (labs_root(), *also):
        with contextlib.suppress(OSError):
            directory.rmdir()


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
