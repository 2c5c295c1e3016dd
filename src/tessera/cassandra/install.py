"""Where `scripts/install.sh` put Cassandra's jars, and the checks that say what is
missing before a JVM is started for nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tessera.cassandra.errors import CassandraError

#: The server version `cassandra/pom.xml` fetches (Cassandra 5.0 supports Java 17).
VERSION = "5.0.2"
HOME_ENV = "TESSERA_CASSANDRA_HOME"
DEFAULT_ROOT = Path("/opt/tessera/cassandra")
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"


def home() -> Path:
    """The install directory: $TESSERA_CASSANDRA_HOME, else /opt/tessera/cassandra/VERSION."""
    override = os.environ.get(HOME_ENV)
    return Path(override) if override else DEFAULT_ROOT / VERSION


def lib_dir() -> Path:
    return home() / "lib"


def server_jar() -> Path:
    return lib_dir() / f"cassandra-all-{VERSION}.jar"


def find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise CassandraError(
            "Java is not installed (apt install openjdk-17-jre-headless, or run scripts/install.sh)"
        )
    return java


def check_installed() -> tuple[str, Path]:
    """(java, lib directory), or a CassandraError naming what to install."""
    java = find_java()
    if not server_jar().is_file():
        raise CassandraError(
            f"Cassandra {VERSION} is not installed: {server_jar()} is missing "
            "(run scripts/install.sh, which fetches it with Maven)"
        )
    return java, lib_dir()


def installed() -> bool:
    try:
        check_installed()
    except CassandraError:
        return False
    return True
