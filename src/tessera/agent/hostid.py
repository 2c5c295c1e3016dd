"""The host's identity: a UUID chosen once and kept on disk.

The host id names this hypervisor in the NSDB (bindings point at it, tunnel zones list
it), so it must survive agent restarts and reboots: a new id would orphan every binding.
`--host-id` overrides it for labs and tests that choose ids themselves.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/tessera")
HOST_ID_FILE_NAME = "host_id"
DEFAULT_HOST_ID_FILE = DEFAULT_STATE_DIR / HOST_ID_FILE_NAME
HOST_ID_ENV = "TESSERA_HOST_ID_FILE"


class HostIdError(Exception):
    """The host id file cannot be read or written (message for humans)."""


def host_id_path(state_dir: Path | None = None) -> Path:
    """`$TESSERA_HOST_ID_FILE`, else `<state dir>/host_id` (default /var/lib/tessera).

    The one rule for where a host's id is: the agent keeps it there, and `tessera bind`
    reads it there to know which host it runs on."""
    env = os.environ.get(HOST_ID_ENV)
    if env:
        return Path(env)
    return (state_dir or DEFAULT_STATE_DIR) / HOST_ID_FILE_NAME


def _valid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


def load_or_create(path: Path) -> str:
    """The id stored at `path`; a new one is created (atomically) when there is none."""
    try:
        existing = path.read_text()
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise HostIdError(f"cannot read the host id file {path}: {exc.strerror}") from None
    if existing is not None:
        value = _valid(existing)
        if value is None:
            raise HostIdError(f"{path} does not hold a host id (a UUID); fix or remove it")
        return value
    new = str(uuid.uuid4())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(new + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise HostIdError(f"cannot write the host id file {path}: {exc.strerror}") from None
    return new


def resolve(host_id: str | None, state_dir: Path | None = None) -> str:
    """`--host-id` if given (validated), else the id kept on disk."""
    if host_id is not None:
        value = _valid(host_id)
        if value is None:
            raise HostIdError(f"--host-id '{host_id}' is not a UUID")
        return value
    return load_or_create(host_id_path(state_dir))
