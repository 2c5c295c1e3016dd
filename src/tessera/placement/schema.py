"""Placement's tables, created idempotently in the session's keyspace.

A provider is one partition of `placement_providers`: its static columns hold the
provider (name, generation, traits, aggregates, inventories, usages) and each
clustering row one consumer's allocation on it. A claim is therefore a single-partition
batch whose condition is the generation: the allocation row and the new usages are
written together or not at all (docs/placement.md).
"""

from __future__ import annotations

from typing import Any

from tessera.placement.model import STANDARD_CLASSES, STANDARD_TRAITS

TABLES = (
    """CREATE TABLE IF NOT EXISTS placement_providers (
        provider uuid,
        consumer uuid,
        name text STATIC,
        generation bigint STATIC,
        traits set<text> STATIC,
        aggregates set<text> STATIC,
        inventories text STATIC,
        usages map<text, bigint> STATIC,
        created timestamp STATIC,
        resources map<text, bigint>,
        PRIMARY KEY (provider, consumer))""",
    """CREATE TABLE IF NOT EXISTS placement_consumers (
        consumer uuid PRIMARY KEY,
        request map<text, bigint>,
        required set<text>,
        state text,
        providers set<uuid>,
        attempts int,
        retries int,
        created timestamp,
        updated timestamp)""",
    """CREATE TABLE IF NOT EXISTS placement_resource_classes (
        name text PRIMARY KEY, discrete boolean, custom boolean)""",
    """CREATE TABLE IF NOT EXISTS placement_traits (name text PRIMARY KEY, custom boolean)""",
)


def ensure_schema(session: Any) -> None:
    """Tables and the standard classes and traits (re-running it changes nothing)."""
    for statement in TABLES:
        session.execute(statement, timeout=60.0)
    session.cluster.control_connection.wait_for_schema_agreement(wait_time=30)
    for name in STANDARD_CLASSES:
        session.execute(
            "INSERT INTO placement_resource_classes (name, discrete, custom) "
            "VALUES (%s, false, false)",
            (name,),
        )
    for name in STANDARD_TRAITS:
        session.execute("INSERT INTO placement_traits (name, custom) VALUES (%s, false)", (name,))
