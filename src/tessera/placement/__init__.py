"""Placement: resource providers, inventories and allocations kept in Cassandra, and a
scheduler that keeps no copy of them and claims with lightweight transactions
(docs/placement.md)."""
