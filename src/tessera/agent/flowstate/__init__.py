"""Connection state at the edge: what it is, where it lives, how it travels.

The records are the simulation's (`tessera.simulation.flowstate`: `ConntrackEntry`,
`NatEntry`), from the simulation's result to the table, the wire and the file.

- `entry`: the agent's bookkeeping around them (the key and tag of an entry, timeouts,
  range checks).
- `table`: the agent's `ConnTable` (the live `FlowStateView` simulations read, idle
  expiry that never outruns the kernel flows carrying a connection, tags to invalidate).
- `wire`: the versioned binary message that carries entries between agents.
- `transport`: UDP sender and receiver on the underlay (members only, replay-proof).
- `persist`: the table kept in a local file across agent restarts.
- `snat`: source ports leased per agent from the NSDB in blocks of 64 (the
  simulation's `NatAllocator`).
- `service`: all of it, started with the agent; the upcall handler installs and shares.
"""
