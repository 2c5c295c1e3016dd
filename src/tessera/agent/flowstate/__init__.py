"""Connection state at the edge: what it is, where it lives, how it travels.

- `entry`: the state record (`ConnKey`, `StateEntry`), independent of who creates it
  (the simulation's conntrack and NAT results reach it through an adapter in the agent).
- `table`: the agent's `ConnTable` (forward and return lookups, idle expiry that never
  outruns the kernel flows carrying a connection, tags to invalidate on removal).
- `wire`: the versioned binary message that carries entries between agents.
- `transport`: UDP sender and receiver on the underlay (members only, replay-proof).
- `persist`: the table kept in a local file across agent restarts.
- `snat`: source ports leased per agent from the NSDB in blocks of 64.
"""
