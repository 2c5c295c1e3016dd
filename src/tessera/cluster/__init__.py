"""Cluster services: work that must run once per cluster, on the elected leader among
the `tessera api serve` processes (MidoNet 5's "cluster" node)."""

from tessera.cluster.janitor import HostLivenessJanitor
from tessera.cluster.services import ELECTION, ClusterServices, Service

__all__ = ["ELECTION", "ClusterServices", "HostLivenessJanitor", "Service"]
