"""Cluster services (MidoNet 5's cluster node): `tessera cluster serve` runs a node whose
services are enabled, disabled or added as plugins, each failing over its own way
(`every-node` or a leader-elected `singleton`). See docs/cluster.md."""

from tessera.cluster.janitor import HostLivenessJanitor
from tessera.cluster.service import (
    EVERY_NODE,
    SINGLETON,
    ClusterService,
    Redundancy,
    ServiceContext,
    ServiceEnv,
)
from tessera.cluster.services import ClusterServices, DisabledService, Timing

__all__ = [
    "EVERY_NODE",
    "SINGLETON",
    "ClusterService",
    "ClusterServices",
    "DisabledService",
    "HostLivenessJanitor",
    "Redundancy",
    "ServiceContext",
    "ServiceEnv",
    "Timing",
]
