"""Compile, load, pin and attach the fast path; everything idempotent.

Layout on bpffs for one host (``pin_dir``, e.g. /sys/fs/bpf/tessera/<host>)::

    maps/{flows,masks,flood_sets,ports,vni_ports,config,stats}   pinned once, reused forever
    progs-<objhash>/{port_ingress,inject,tunnel_rx}              one dir per object build

(bpffs refuses names containing a dot, even for a lookup: EPERM.)

Why: the maps carry the installed flows, so an agent restart (or a new
program build) must find them again -- a reload passes every pinned map to
bpftool (``map name X pinned P``) instead of creating new ones, and a pinned
map whose shape differs from what the program expects stops the load with
an error rather than being silently recreated (that would drop every flow).
A map the pin directory lacks (one added by a newer build, like
``flood_sets``) is created and pinned beside the reused ones.
Program pins are per object hash, so a restart with the same build loads
nothing at all and the running tc filters are never touched.

Slow, rare steps (compile, load, attach) shell out to clang/bpftool/tc;
map operations never do (see :mod:`.maps`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tessera.datapath.conntrack import check_ct_entries
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.layout import CtKey, CtValue, layout_mismatches
from tessera.datapath.ebpf.maps import MAP_SPECS, FastPathMaps, map_spec_mismatches, spec_mismatch
from tessera.datapath.ebpf.maps.bpfmap import BpfMap
from tessera.datapath.ebpf.maps.conntrack import ConntrackMap
from tessera.datapath.ebpf.netns import netns_path, nsenter_prefix, run_in_netns

__all__ = [
    "BPFFS",
    "DEFAULT_CACHE_DIR",
    "PROGRAMS",
    "SOURCE_DIR",
    "TC_PREF",
    "EbpfFastPath",
    "LoadError",
    "TcFilter",
    "ToolMissing",
    "compile_object",
    "ensure_bpffs",
    "object_btf",
]

SOURCE_DIR: Final = Path(__file__).resolve().parent
SOURCES: Final = ("tessera_dp.c", "flow.h")
DEFAULT_CACHE_DIR: Final = Path("/var/lib/tessera/bpf")
BPFFS: Final = Path("/sys/fs/bpf")
PROGRAMS: Final = ("port_ingress", "inject", "tunnel_rx")
#: tc filter priority/handle of tessera's filter on every device it owns.
TC_PREF: Final = 1000
TC_HANDLE: Final = 1
CFLAGS: Final = ("-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror")
_MULTIARCH: Final = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}
_TOOL_HINT: Final = "Debian: apt-get install clang llvm libbpf-dev bpftool iproute2"


class LoadError(RuntimeError):
    """Compiling, loading or attaching failed; the message says which step."""


class ToolMissing(LoadError):
    pass


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(
            f"{name} not found in PATH; it is needed to build the eBPF fast path ({_TOOL_HINT})"
        )
    return path


def _run(argv: Sequence[str], what: str, timeout: float = 60) -> str:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as e:
        raise ToolMissing(f"{what}: {e.filename} not found ({_TOOL_HINT})") from None
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip()
        tail = "\n".join(out.splitlines()[-40:])
        raise LoadError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    return proc.stdout


# --- bpffs ------------------------------------------------------------------------


def _mounts() -> list[tuple[str, str]]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[1].replace("\\040", " "), parts[2]))
    return out


def is_bpffs(path: Path) -> bool:
    """Whether ``path`` (existing or not) would live on a bpf filesystem."""
    target = str(path.resolve() if path.exists() else path)
    best, best_type = "", ""
    for mnt, fstype in _mounts():
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, best_type = mnt, fstype
    return best_type == "bpf"


def ensure_bpffs(mountpoint: Path = BPFFS) -> None:
    """Mount bpffs on ``mountpoint`` unless it already is one."""
    if is_bpffs(mountpoint):
        return
    mountpoint.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "bpf", "bpf", str(mountpoint)], f"mounting bpffs on {mountpoint}")


# --- compile ------------------------------------------------------------------------


def _include_dirs(source_dir: Path) -> list[str]:
    dirs = [str(source_dir)]
    multiarch = _MULTIARCH.get(platform.machine())
    if multiarch and Path("/usr/include", multiarch).is_dir():
        dirs.append(f"/usr/include/{multiarch}")
    return [f"-I{d}" for d in dirs]


def compile_object(
    source_dir: Path = SOURCE_DIR,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    main: Path | None = None,
    extra_cflags: Sequence[str] = (),
) -> Path:
    """Compile once per (sources, compiler, flags) hash; return the cached .o.

    ``main`` defaults to ``source_dir/tessera_dp.c``; another file (a test
    harness that #includes the program) may be given, and ``source_dir`` stays
    on the include path.  The object is written under a temporary name and
    renamed, so a concurrent agent never sees half an object.
    """
    clang = _tool("clang")
    main = main or source_dir / "tessera_dp.c"
    version = _run([clang, "--version"], "clang --version")
    argv_flags = [*CFLAGS, *_include_dirs(source_dir), *extra_cflags]
    h = hashlib.sha256()
    for p in [*(source_dir / n for n in SOURCES), main]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(version.encode())
    h.update("\0".join(argv_flags).encode())
    out = cache_dir / f"{main.stem}-{h.hexdigest()[:16]}.o"
    if out.exists():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    try:
        _run([clang, *argv_flags, "-c", str(main), "-o", str(tmp)], f"compiling {main.name}")
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def object_btf(obj: Path) -> dict[str, object]:
    """``bpftool -j btf dump file obj`` as a dict (for the layout check)."""
    bpftool = _tool("bpftool")
    result: dict[str, object] = json.loads(
        _run([bpftool, "-j", "btf", "dump", "file", str(obj), "format", "raw"], "bpftool btf dump")
    )
    return result


def check_object_layout(obj: Path) -> None:
    """Refuse an object whose structs, enums, limits or maps differ from the Python
    copies (layout.py, MAP_SPECS): they would write flows the program misreads."""
    btf = object_btf(obj)
    problems = layout_mismatches(btf) + map_spec_mismatches(btf)
    if problems:
        raise LoadError(
            f"{obj.name}: flow.h/tessera_dp.c and layout.py/MAP_SPECS disagree; fix the "
            "Python side:\n  " + "\n  ".join(problems)
        )


# --- tc -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcFilter:
    """tessera's filter on a device's clsact ingress."""

    prog_id: int
    prog_name: str


# --- the fast path ----------------------------------------------------------------------


class EbpfFastPath:
    """One host's fast path: pinned maps + programs, attached in ``netns``.

    ``netns`` is the namespace of the devices (a name under /run/netns, a
    path, or None for the caller's).  Map access works from any namespace:
    maps are reached through bpffs.
    """

    def __init__(
        self,
        pin_dir: str | os.PathLike[str],
        netns: str | os.PathLike[str] | None = None,
        *,
        cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
        source_dir: str | os.PathLike[str] = SOURCE_DIR,
        cflags: Sequence[str] = (),
        ct_entries: int | None = None,
    ) -> None:
        """`ct_entries`: the connection table's size (None: a pinned table's, else
        `CT_MAX_ENTRIES`). A pinned table of another size is replaced by one of that
        size holding its connections (`ct_resized`, then `finish_ct_resize`)."""
        self.ct_entries = None if ct_entries is None else check_ct_entries(ct_entries)
        self._ct_previous: ConntrackMap | None = None
        self.pin_dir = Path(pin_dir)
        self.netns = netns
        self.cache_dir = Path(cache_dir)
        self.source_dir = Path(source_dir)
        self.cflags = tuple(cflags)
        self.map_dir = self.pin_dir / "maps"
        self.obj: Path | None = None
        self.prog_dir: Path | None = None
        self._maps: FastPathMaps | None = None

    # -- load ------------------------------------------------------------------

    def load(self) -> EbpfFastPath:
        """Compile (cached), load and pin; reuse pinned maps; idempotent."""
        if not is_bpffs(self.pin_dir):
            ensure_bpffs()
        if not is_bpffs(self.pin_dir):
            raise LoadError(f"{self.pin_dir} is not on a bpf filesystem")
        obj = compile_object(self.source_dir, self.cache_dir, extra_cflags=self.cflags)
        check_object_layout(obj)
        prog_dir = self.pin_dir / f"progs-{obj.stem.rsplit('-', 1)[-1]}"
        have_maps = all((self.map_dir / n).exists() for n in MAP_SPECS)
        have_progs = all((prog_dir / p).exists() for p in PROGRAMS)
        resize = self._ct_resize_wanted()
        if not (have_maps and have_progs) or resize:
            self._load_object(obj, prog_dir, resize=resize)
        self.obj, self.prog_dir = obj, prog_dir
        if self._maps is None:
            try:
                self._maps = FastPathMaps.open(self.map_dir)
            except ValueError as e:  # a pinned map of the wrong shape
                raise LoadError(f"{e}; refusing to use it (see purge())") from None
        self._check_programs_use_pinned_maps()
        self._remove_stale_prog_dirs()
        return self

    def _ct_resize_wanted(self) -> bool:
        pin = self.map_dir / "conntrack"
        if self.ct_entries is None or not pin.exists():
            return False
        fd = bpf.obj_get(pin)
        try:
            return bpf.map_info(fd).max_entries != self.ct_entries
        finally:
            os.close(fd)

    def _new_conntrack(self, resize: bool) -> Path:
        """Create the connection table the size asked for and pin it: in place of a
        missing one, or beside the pinned one (`conntrack_resized`, holding a copy of
        its connections) for the programs to be loaded with, the pinned one kept open
        until the programs that write it are replaced (`finish_ct_resize`)."""
        spec = MAP_SPECS["conntrack"]
        path = self.map_dir / ("conntrack_resized" if resize else "conntrack")
        _rm_pins(path)  # a resize that failed half-way
        fd = bpf.map_create(
            spec.type, spec.key_size, spec.value_size, self.ct_entries or spec.max_entries,
            spec.flags, "conntrack",
        )  # fmt: skip
        table = ConntrackMap(BpfMap(fd, "conntrack", CtKey, CtValue))
        try:
            if resize:
                pinned = BpfMap.open_pinned(self.map_dir / "conntrack", CtKey, CtValue)
                previous = ConntrackMap(pinned)
                try:
                    table.merge_from(previous)
                except BaseException:
                    previous.map.close()
                    raise
                self._ct_previous = previous
            bpf.obj_pin(fd, path)
        finally:
            table.map.close()
        return path

    @property
    def ct_resized(self) -> bool:
        """The connection table was resized by `load` and the old one's programs may
        still run (on devices a previous agent attached them to)."""
        return self._ct_previous is not None

    def finish_ct_resize(self) -> int:
        """Once every device runs the programs `load` made: copy what the old programs
        committed since `load` copied the table, and let the old table go. How many
        connections the old table held."""
        previous, self._ct_previous = self._ct_previous, None
        if previous is None:
            return 0
        try:
            return self.maps.conntrack.merge_from(previous)
        finally:
            previous.map.close()

    def _load_object(self, obj: Path, prog_dir: Path, *, resize: bool = False) -> None:
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        self.map_dir.mkdir(exist_ok=True)
        existing = [n for n in MAP_SPECS if (self.map_dir / n).exists()]
        for name in existing:
            fd = bpf.obj_get(self.map_dir / name)
            try:
                why = spec_mismatch(MAP_SPECS[name], bpf.map_info(fd))
            finally:
                os.close(fd)
            if why:
                raise LoadError(
                    f"{why}; refusing to recreate it (that would drop every flow). "
                    f"Migrate it, or remove {self.map_dir} deliberately (EbpfFastPath.purge())."
                )
        pins = {name: self.map_dir / name for name in existing}
        if resize or "conntrack" not in pins:
            pins["conntrack"] = self._new_conntrack(resize)
        tag = f"{os.getpid()}"
        tmp_progs = self.pin_dir / f"tmp_progs_{tag}"
        tmp_maps = self.pin_dir / f"tmp_maps_{tag}"
        for d in (tmp_progs, tmp_maps):
            _rm_pins(d)
        argv = [_tool("bpftool"), "prog", "loadall", str(obj), str(tmp_progs), "type", "classifier"]
        for name, pin in pins.items():
            argv += ["map", "name", name, "pinned", str(pin)]
        missing = [n for n in MAP_SPECS if n not in pins]
        if missing:
            argv += ["pinmaps", str(tmp_maps)]
        try:
            _run(argv, "bpftool prog loadall")
            for name in missing:
                os.rename(tmp_maps / name, self.map_dir / name)
            if resize:
                os.rename(pins["conntrack"], self.map_dir / "conntrack")
            _rm_pins(prog_dir)
            os.rename(tmp_progs, prog_dir)
        finally:
            _rm_pins(tmp_progs)
            _rm_pins(tmp_maps)

    def _check_programs_use_pinned_maps(self) -> None:
        assert self._maps is not None and self.prog_dir is not None
        pinned = {bpf.map_info(self._maps.fd(n)).id for n in MAP_SPECS}
        for prog in PROGRAMS:
            fd = bpf.obj_get(self.prog_dir / prog)
            try:
                info = bpf.prog_info(fd)
            finally:
                os.close(fd)
            stray = set(info.map_ids) - pinned
            if stray:
                raise LoadError(
                    f"program {prog} uses maps {sorted(stray)} that are not the pinned ones"
                )

    def _remove_stale_prog_dirs(self) -> None:
        for d in self.pin_dir.glob("progs-*"):
            if d != self.prog_dir:
                _rm_pins(d)

    @property
    def maps(self) -> FastPathMaps:
        if self._maps is None:
            raise LoadError("fast path not loaded: call load() first")
        return self._maps

    def prog_path(self, program: str) -> Path:
        if self.prog_dir is None:
            raise LoadError("fast path not loaded: call load() first")
        if program not in PROGRAMS:
            raise ValueError(f"unknown program {program!r}; one of {PROGRAMS}")
        return self.prog_dir / program

    def prog_fd(self, program: str) -> int:
        """An fd of a loaded program (caller closes), e.g. for test runs."""
        return bpf.obj_get(self.prog_path(program))

    # -- devices ------------------------------------------------------------------

    def ifindex(self, ifname: str) -> int:
        """ifindex of ``ifname`` in this fast path's namespace."""
        try:
            return run_in_netns(self.netns, lambda: socket.if_nametoindex(ifname))
        except OSError as e:
            raise LoadError(
                f"no device {ifname!r} in netns {self.netns or '(current)'}: {e}"
            ) from None

    def _tc(self, *args: str, what: str) -> str:
        return _run([*nsenter_prefix(self.netns), _tool("tc"), *args], what, timeout=20)

    def attached(self, ifname: str) -> TcFilter | None:
        """tessera's filter on ``ifname``'s ingress, if any."""
        out = self._tc(
            "-j", "filter", "show", "dev", ifname, "ingress", what=f"tc filter show {ifname}"
        )
        for f in json.loads(out or "[]"):
            opts = f.get("options") or {}
            if f.get("pref") == TC_PREF and "prog" in opts:
                return TcFilter(int(opts["prog"]["id"]), str(opts["prog"].get("name", "")))
        return None

    def attach(self, ifname: str, program: str = "port_ingress") -> None:
        """Run ``program`` on ``ifname``'s tc ingress (replaces an older one)."""
        path = self.prog_path(program)
        self._tc("qdisc", "replace", "dev", ifname, "clsact", what=f"tc clsact on {ifname}")
        self._tc(
            "filter", "replace", "dev", ifname, "ingress", "pref", str(TC_PREF),
            "handle", str(TC_HANDLE), "bpf", "direct-action", "object-pinned", str(path),
            what=f"attaching {program} to {ifname}",
        )  # fmt: skip

    def detach(self, ifname: str, *, remove_qdisc: bool = False) -> bool:
        """Remove tessera's filter; False if the device or filter is gone."""
        try:
            if self.attached(ifname) is None:
                return False
        except LoadError:
            return False  # the device is gone, so is the filter
        self._tc(
            "filter", "del", "dev", ifname, "ingress", "pref", str(TC_PREF),
            what=f"detaching from {ifname}",
        )  # fmt: skip
        if remove_qdisc:
            with contextlib.suppress(LoadError):
                self._tc("qdisc", "del", "dev", ifname, "clsact", what=f"tc clsact del {ifname}")
        return True

    def bind_port(self, ifname: str, port_no: int) -> int:
        """Map ``ifname`` to ``port_no`` and attach port_ingress; returns ifindex."""
        ifindex = self.ifindex(ifname)
        self.maps.ports.set(ifindex, port_no)
        self.attach(ifname, "port_ingress")
        return ifindex

    def unbind_port(self, ifname: str) -> None:
        with contextlib.suppress(LoadError):
            self.maps.ports.delete(self.ifindex(ifname))
        self.detach(ifname)

    def set_miss_device(self, ifname: str) -> int:
        """Misses go out of ``ifname`` (the datapath end of the miss veth);
        packets the agent writes back arrive on its ingress, where ``inject``
        runs.  Returns its ifindex."""
        ifindex = self.ifindex(ifname)
        self.attach(ifname, "inject")
        self.maps.config.set(miss_ifindex=ifindex)
        return ifindex

    def set_vxlan_device(self, ifname: str) -> int:
        """Default device of OUTPUT_TUNNEL; ``tunnel_rx`` runs on its ingress."""
        ifindex = self.ifindex(ifname)
        self.attach(ifname, "tunnel_rx")
        self.maps.config.set(vxlan_ifindex=ifindex)
        return ifindex

    # -- teardown -------------------------------------------------------------------

    def close(self) -> None:
        """Close fds; pins and attachments stay (flows keep forwarding)."""
        if self._maps is not None:
            self._maps.close()
            self._maps = None

    def purge(self) -> None:
        """Remove every pin of this host (maps included): an explicit reset.

        Attached filters keep their programs (and those their maps) alive
        until detached or their devices vanish.
        """
        self.close()
        _rm_pins(self.pin_dir)

    def teardown(self, devices: Sequence[str] = ()) -> list[str]:
        """The explicit opposite of load + attach: detach tessera's filter from every
        device the pinned ports map names and from ``devices``, then remove every pin.
        Only an operator's cleanup calls this; a stopping agent never does (the
        kernel keeps forwarding without it). Returns the devices detached from."""
        names = list(devices)
        if all((self.map_dir / n).exists() for n in MAP_SPECS):
            with contextlib.suppress(ValueError, OSError):
                maps = self._maps or FastPathMaps.open(self.map_dir)
                self._maps = maps
                for ifx in maps.ports.items():
                    with contextlib.suppress(OSError):
                        name = functools.partial(socket.if_indextoname, ifx)
                        names.append(run_in_netns(self.netns, name))
        detached = []
        for ifname in dict.fromkeys(names):
            if self.detach(ifname):
                detached.append(ifname)
            self._remove_empty_clsact(ifname)
        self.purge()
        return detached

    def _remove_empty_clsact(self, ifname: str) -> None:
        """Remove the clsact qdisc attach() added, unless something else filters there."""
        try:
            for direction in ("ingress", "egress"):
                out = self._tc(
                    "-j", "filter", "show", "dev", ifname, direction,
                    what=f"tc filter show {ifname} {direction}",
                )  # fmt: skip
                if json.loads(out or "[]"):
                    return
            self._tc("qdisc", "del", "dev", ifname, "clsact", what=f"tc clsact del {ifname}")
        except LoadError:
            pass  # the device or its qdisc is gone already

    def __enter__(self) -> EbpfFastPath:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EbpfFastPath(pin_dir={str(self.pin_dir)!r}, netns={netns_path(self.netns)!s})"


def _rm_pins(path: Path) -> None:
    """Remove a pin or a directory of pins (bpffs: unlink/rmdir only)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _rm_pins(child)
        path.rmdir()
    else:
        path.unlink()
