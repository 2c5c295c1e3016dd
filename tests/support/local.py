"""What this machine offers a test that starts processes: the `tessera` command and
free local ports."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

#: The `tessera` command of this virtualenv (beside its interpreter), never whichever one
#: is first on PATH: the tests run the checkout they belong to.
TESSERA = str(Path(sys.executable).with_name("tessera"))


def free_port() -> int:
    """A local TCP port nobody listens on now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
