"""The lab's daemons: started detached, found again by pid file, stopped only if ours.

A pid file holds the pid and the process's start time (field 22 of /proc/PID/stat): a
pid reused by an unrelated process after ours died never matches, so `down` and `agent
stop` can only ever signal what the lab started. Every process the lab starts also
carries `TESSERA_LAB_OWNER=<lab directory>` in its environment: `down` finds by it what
a lost pid file no longer names (and nothing else has that variable).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def tessera_command() -> list[str]:
    """How to run `tessera` from here: the console script beside this interpreter, else
    the one on PATH, else the interpreter itself."""
    beside = Path(sys.executable).with_name("tessera")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("tessera")
    if found:
        return [found]
    return [sys.executable, "-c", "from tessera.cli.main import main; main()"]


def python() -> str:
    """The interpreter running tessera (its modules are importable from it)."""
    return sys.executable


def signal_hup(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGHUP)


OWNER_ENV = "TESSERA_LAB_OWNER"


def spawn(
    argv: Sequence[str],
    pid_file: Path,
    log_file: Path,
    *,
    owner: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start `argv` detached (own session, stdin closed, output appended to `log_file`)
    and record it in `pid_file`. It outlives the command that started it."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env[OWNER_ENV] = str(owner)
    full_env.update(env or {})
    with open(log_file, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=owner,
            env=full_env,
            start_new_session=True,
        )
    started = start_time(process.pid)
    pid_file.write_text(f"{process.pid} {started if started is not None else 0}\n")
    # The Popen object is dropped on purpose: the daemon is not ours to wait for.
    # A zombie it may leave in a long-lived caller (tests) is reaped by `_reap`.
    return process.pid


def owned_by(owner: Path) -> list[int]:
    """Processes started by the lab whose directory is `owner` (and their children)."""
    marker = f"{OWNER_ENV}={owner}".encode()
    me = os.getpid()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found.append(int(entry))
    return found


def read_pid(pid_file: Path) -> int | None:
    """The recorded process if it still runs (same pid *and* start time), else None."""
    try:
        pid_text, _, start_text = pid_file.read_text().strip().partition(" ")
        pid, recorded = int(pid_text), int(start_text or 0)
    except (OSError, ValueError):
        return None
    started = start_time(pid)
    if started is None or started != recorded:
        _reap(pid)
        return None
    return pid


def _reap(pid: int) -> None:
    """Collect the exit status of a child of ours that exited (no-op for others)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pid: int, started: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        now = start_time(pid)
        if now is None or now != started:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def terminate(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True once the process is gone."""
    started = start_time(pid)
    if started is None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_gone(pid, started, timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return wait_gone(pid, started, 5.0)


def stop(pid_file: Path, timeout: float = 10.0) -> bool:
    """Stop the process recorded in `pid_file` (if it is still that process) and remove
    the file; False if it would not die."""
    pid = read_pid(pid_file)
    gone = True if pid is None else terminate(pid, timeout)
    if gone:
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    return gone


def stop_all(pid_files: list[Path], timeout: float = 10.0) -> list[Path]:
    """`stop` for several processes at once: each is sent SIGTERM before any is waited
    for, so they shut down side by side. The pid files of those that would not die."""
    running: list[tuple[Path, int, int | None]] = []
    for pid_file in pid_files:
        pid = read_pid(pid_file)
        if pid is None:
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()
            continue
        started = start_time(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        running.append((pid_file, pid, started))
    deadline = time.monotonic() + timeout
    stuck = []
    for pid_file, pid, started in running:
        if not wait_gone(pid, started, max(0.0, deadline - time.monotonic())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not wait_gone(pid, started, 5.0):
                stuck.append(pid_file)
                continue
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    return stuck


def last_lines(log_file: Path, count: int = 3) -> str:
    """The last non-empty lines of a log, joined on one line (for error messages)."""
    try:
        with open(log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("---")]
    return " | ".join(lines[-count:])
