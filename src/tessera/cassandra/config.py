"""What one node is told: its `cassandra.yaml`, its logging and its JVM command line.

A tessera node is small and quick to start: one token (clusters are made whole, every
node with its `initial_token` spread evenly over the ring, so nothing bootstraps or
streams), every node a seed (any node restarts alone), no authentication, only the
storage and CQL ports on the node's own loopback address (so nodes of several clusters
on one machine all use the standard ports without clashing), no JMX, and data under the
node's directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STORAGE_PORT = 7000
CQL_PORT = 9042
MIN_TOKEN = -(2**63)


@dataclass(frozen=True)
class NodeConfig:
    """One node of a cluster of `size` nodes; `index` is 0-based."""

    directory: Path
    address: str
    index: int
    size: int
    seeds: tuple[str, ...]
    cluster_name: str
    heap_mb: int = 512

    @property
    def yaml_path(self) -> Path:
        return self.directory / "cassandra.yaml"

    @property
    def logback_path(self) -> Path:
        return self.directory / "logback.xml"

    @property
    def log_path(self) -> Path:
        return self.directory / "system.log"

    @property
    def initial_token(self) -> int:
        """Tokens spread evenly: with one token per node the ring splits fairly."""
        return MIN_TOKEN + self.index * (2**64 // self.size)

    def write(self) -> None:
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.yaml_path.write_text(yaml_text(self))
        self.logback_path.write_text(logback_text(self.log_path))


def yaml_text(node: NodeConfig) -> str:
    d = node.directory
    seeds = ",".join(f"{s}:{STORAGE_PORT}" for s in node.seeds)
    lines = [
        "# written by tessera (tessera.cassandra.config): edits are overwritten",
        f"cluster_name: '{node.cluster_name}'",
        "num_tokens: 1",
        f"initial_token: {node.initial_token}",
        "auto_bootstrap: false",
        "partitioner: org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch: SimpleSnitch",
        "seed_provider:",
        "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider",
        "    parameters:",
        f'      - seeds: "{seeds}"',
        f"listen_address: {node.address}",
        f"rpc_address: {node.address}",
        f"storage_port: {STORAGE_PORT}",
        f"native_transport_port: {CQL_PORT}",
        "start_native_transport: true",
        "authenticator: AllowAllAuthenticator",
        "authorizer: AllowAllAuthorizer",
        f"data_file_directories: ['{d / 'data'}']",
        f"commitlog_directory: '{d / 'commitlog'}'",
        f"saved_caches_directory: '{d / 'saved_caches'}'",
        f"hints_directory: '{d / 'hints'}'",
        f"cdc_raw_directory: '{d / 'cdc_raw'}'",
        # The commit log is written by the OS at its pace: a killed node loses nothing
        # (the page cache has it); only a machine crash would, and takes the lab along.
        "commitlog_sync: periodic",
        "commitlog_sync_period: 10000ms",
        "commitlog_segment_size: 8MiB",
        "auto_snapshot: false",
        "snapshot_before_compaction: false",
        "concurrent_compactors: 1",
        "disk_failure_policy: stop",
        "commit_failure_policy: stop",
        "",
    ]
    return "\n".join(lines)


def logback_text(log_path: Path) -> str:
    """INFO and above to `log_path` (rolled at 10 MB, two old files kept), nothing to
    the console: the console is the process's own output file (`cassandra.out`)."""
    return f"""<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{log_path}</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{log_path}.%i</fileNamePattern>
      <minIndex>1</minIndex><maxIndex>2</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>10MB</maxFileSize>
    </triggeringPolicy>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


# Cassandra's own conf/jvm17-server.options: the JDK internals it reaches into.
_JAVA17_MODULE_FLAGS = (
    "-Djdk.attach.allowAttachSelf=true",
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
            "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.lang.reflect",
            "jdk.compiler/com.sun.tools.javac",
            "java.base/java.lang",
            "java.base/java.util",
        )
    ),
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)


def java_command(java: str, lib: Path, node: NodeConfig, main_class: str) -> list[str]:
    """The node's JVM: a small heap, G1, Cassandra's Java 17 module flags, and the
    start-up shortcuts a cluster made whole allows (no waiting for gossip to settle, a
    short ring delay). The yaml path on the command line is how the process is
    recognised later (`node.is_node`)."""
    d = node.directory
    return [
        java,
        f"-Xms{min(256, node.heap_mb)}m",
        f"-Xmx{node.heap_mb}m",
        "-Xss512k",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=300",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:+PerfDisableSharedMem",
        "-Djava.awt.headless=true",
        "-Djava.net.preferIPv4Stack=true",
        *_JAVA17_MODULE_FLAGS,
        f"-Dcassandra.config=file://{node.yaml_path}",
        f"-Dlogback.configurationFile={node.logback_path}",
        f"-Dcassandra.storagedir={d}",
        f"-Dcassandra.logdir={d}",
        "-Dcassandra-foreground=yes",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.ring_delay_ms=1000",
        "-cp",
        f"{lib}/*",
        main_class,
    ]
