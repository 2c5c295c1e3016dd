"""The agent's Prometheus metrics, in a registry of its own.

A registry per agent (not the process-global default) because tests run several agents
in one process; `serve()` exposes it on `--metrics ADDR:PORT` when asked.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.misses = Counter("tessera_agent_misses", "Missed packets handled", registry=r)
        self.collapsed = Counter(
            "tessera_agent_misses_collapsed",
            "Misses joined to a simulation already pending for their flow",
            registry=r,
        )
        self.simulations = Counter(
            "tessera_agent_simulations", "Simulations run (re-runs included)", registry=r
        )
        self.installed = Counter("tessera_agent_flows_installed", "Flows installed", registry=r)
        self.invalidated = Counter(
            "tessera_agent_flows_invalidated", "Flows removed by tag invalidation", registry=r
        )
        self.expired = Counter(
            "tessera_agent_flows_expired", "Flows removed after idling", registry=r
        )
        self.reconciled_removed = Counter(
            "tessera_agent_flows_reconciled_removed",
            "Installed flows removed because nothing wanted them any more",
            registry=r,
        )
        self.emitted = Counter(
            "tessera_agent_packets_emitted", "Packets the agent generated and sent", registry=r
        )
        self.flows = Gauge("tessera_agent_flows", "Flows currently desired", registry=r)
        self.sweep_seconds = Gauge(
            "tessera_agent_sweep_seconds",
            "Miss-thread time the last sweep of flows and connections took (it spaces the "
            "next: at most 5 % of the thread)",
            registry=r,
        )
        self.ports = Gauge("tessera_agent_ports", "Local ports attached", registry=r)
        self.held = Gauge(
            "tessera_agent_packets_held", "Packets waiting for a device or an ARP entry", registry=r
        )
        self.simulation_errors = Counter(
            "tessera_agent_simulation_errors",
            "Simulations (or the handling of their result) that raised, by exception type: "
            "their packets were dropped and a warning logged (at most once a minute per "
            "port and type)",
            ["error"],
            registry=r,
        )
        self.simulation_limits = Counter(
            "tessera_agent_simulation_limits",
            "Simulations stopped by a cost limit, by limit (hops, device_visits, "
            "rules_evaluated, chain_depth): their packet, or one it generated, was dropped",
            ["limit"],
            registry=r,
        )
        self.reply_predictions = Counter(
            "tessera_agent_reply_predictions",
            "New connections whose reply flow was predicted and installed with the forward "
            "flow (result installed), or not, by reason (remote, unsupported, covered, "
            "unclean, not_loaded, error)",
            ["result"],
            registry=r,
        )
        self.sim_seconds = Histogram(
            "tessera_agent_simulation_seconds",
            "Time to simulate one packet",
            buckets=(5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2),
            registry=r,
        )

        # Connection state (agent.flowstate): the table, the flow-state exchange, SNAT.
        self.datapath_connections = Gauge(
            "tessera_agent_datapath_connections",
            "Answered connections in the datapath's table, as read by the last sweep",
            registry=r,
        )
        self.datapath_connections_capacity = Gauge(
            "tessera_agent_datapath_connections_capacity",
            "Answered connections the datapath's table holds before it evicts the least "
            "recently used",
            registry=r,
        )
        self.datapath_connections_unanswered = Gauge(
            "tessera_agent_datapath_connections_unanswered",
            "Connections nobody answered yet, in the datapath's table of their own, as "
            "read by the last sweep",
            registry=r,
        )
        self.conntrack_entries = Gauge(
            "tessera_agent_conntrack_entries", "Connection and NAT entries held", registry=r
        )
        self.flowstate_sent = Counter(
            "tessera_agent_flowstate_sent", "Flow-state messages sent to peers", registry=r
        )
        self.flowstate_received = Counter(
            "tessera_agent_flowstate_received",
            "Flow-state messages accepted from peers",
            registry=r,
        )
        self.flowstate_rejected = Counter(
            "tessera_agent_flowstate_rejected",
            "Flow-state messages rejected, by reason",
            ["reason"],
            registry=r,
        )
        self.flowstate_removals = Counter(
            "tessera_agent_flowstate_removals",
            "Removals of pushed entries received from their owners, by what they did "
            "(dropped, released, unknown, refused: not the sender's copy)",
            ["result"],
            registry=r,
        )
        self.flowstate_conflicts = Counter(
            "tessera_agent_flowstate_conflicts",
            "Entries pushed by a peer that would have replaced a different entry this host "
            "created (refused: only an entry's owner rebinds its key)",
            registry=r,
        )
        self.flowstate_closes = Counter(
            "tessera_agent_flowstate_closes",
            "FIN/RST notices received from hosts an entry was pushed to, by what they did "
            "(noted, unknown, refused)",
            ["result"],
            registry=r,
        )
        self.snat_exhausted = Counter(
            "tessera_agent_snat_exhausted",
            "Connections dropped because no SNAT address and port was free",
            registry=r,
        )

    def serve(self, address: str) -> None:
        """Serve /metrics on `ADDR:PORT` (or just `PORT`)."""
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)
