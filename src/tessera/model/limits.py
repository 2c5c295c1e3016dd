"""How long each list of the model may grow, and why.

Every object is stored whole in one NSDB node (ZooKeeper refuses a node past 1 MB, and
the store refuses an encoded object past 512 KiB as a safety net), and every change to
it rewrites and re-sends it to every agent. So each list is bounded far above what a
deployment uses, and low enough that the largest valid object of each kind stays well
below the store's cap (docs/api.md, "Limits", has the measured sizes; the test
`tests/unit/model/test_model_limits.py` measures them again).

The DHCP limits come from the packet instead: each option the bridge's DHCP server
sends must fit one option instance of 255 bytes, so that a client without RFC 3396
(split options) support still receives the whole list, and the whole reply then fits a
1500-byte Ethernet frame.
"""

from __future__ import annotations

MAX_MIRRORS_PER_DIRECTION = 32
"""Mirror ids in a device's or port's `inbound_mirror_ids` / `outbound_mirror_ids`."""

MAX_RULES_PER_CHAIN = 4096
"""Rules in one chain (`rule_ids`): a security group's rules, with room to spare."""

MAX_PORTS_PER_CONDITION = 64
"""Ports in a rule's or mirror condition's `in_ports` / `out_ports`; larger sets are
what port groups are for."""

MAX_NAT_TARGETS = 64
"""`nat_targets` of one dnat/snat rule (each is already a range of addresses)."""

MAX_MIRROR_CONDITIONS = 32
"""`conditions` of one mirror (any of them matching copies the packet)."""

MAX_PORT_GROUP_MEMBERS = 4096
"""Ports in one port group (`port_ids`)."""

MAX_IP_ADDR_GROUP_MEMBERS = 4096
"""Addresses in one IP address group (`addrs`)."""

MAX_HOST_ADDRESSES = 64
"""Addresses an agent registers for its host (`addresses`)."""

MAX_TUNNEL_ZONE_HOSTS = 2048
"""Hosts in one tunnel zone (`hosts`)."""

MAX_DHCP_HOSTS = 1024
"""Static hosts (leases) of one DHCP subnet (`hosts`)."""

DHCP_OPTION_MAX_BYTES = 255
"""The value of one DHCP option instance (RFC 2132 §2: a one-byte length)."""

MAX_DNS_SERVERS = DHCP_OPTION_MAX_BYTES // 4
"""`dns_server_addrs` of a DHCP subnet: 63 four-byte addresses fill option 6."""

MAX_OPT121_ROUTES = DHCP_OPTION_MAX_BYTES // 5
"""`opt121_routes` of a DHCP subnet: 51, as the shortest encoded route (a /0) takes 5
bytes; the encoded size is checked too (a /32 takes 9), see `MAX_OPT121_BYTES`."""

MAX_OPT121_BYTES = DHCP_OPTION_MAX_BYTES
"""Option 121 as the server sends it: the routes, RFC 3442-encoded, plus the default
route through the subnet's gateway that the server adds when none of the routes is a
default route (clients that honour option 121 ignore option 3)."""

MAX_DHCP_HOSTNAME_LEN = 63
"""A DHCP host's `name`, sent as the client's host name (option 12): clients set it as
the kernel's host name, which Linux bounds to 64 bytes (HOST_NAME_MAX); 63 is also a DNS
label's limit. The domain is the resolver's business, not option 12's."""

# -- Neutron objects (tessera.neutron): Neutron's own defaults where it has one ----------

MAX_NEUTRON_TAGS = 64
"""Tags on one Neutron resource (Neutron sets none; far above what tooling attaches)."""

MAX_ALLOCATION_POOLS = 64
"""A Neutron subnet's `allocation_pools`."""

MAX_SUBNET_HOST_ROUTES = 20
"""A Neutron subnet's `host_routes` (Neutron's `max_subnet_host_routes` default); they
become DHCP option 121 routes, which hold at most 51."""

MAX_FIXED_IPS = 5
"""A Neutron port's `fixed_ips` (Neutron's `max_fixed_ips_per_port` default)."""

MAX_ADDRESS_PAIRS = 10
"""A Neutron port's `allowed_address_pairs` (Neutron's `max_allowed_address_pair`)."""

MAX_PORT_SECURITY_GROUPS = 64
"""Security groups on one Neutron port."""

MAX_ROUTER_ROUTES = 30
"""A Neutron router's static `routes` (Neutron's `max_routes` default)."""

MAX_ROUTER_INTERFACES = 256
"""Subnets (interfaces) one Neutron router connects."""

MAX_ROUTER_GATEWAY_ROUTES = 2
"""Routes a Neutron router's external gateway makes: its subnet, the default route."""

MAX_ROUTER_GATEWAY_RULES = 2
"""NAT rules the gateway's SNAT makes: a dynamic snat (outbound), a rev_snat (inbound)."""

MAX_FLOATING_IP_RULES = 2
"""NAT rules an associated floating IP makes: dnat (inbound), snat (outbound)."""
MAX_SECURITY_GROUP_RULES = 1024
"""Rules of one Neutron security group (Neutron's default quota is 100 per project)."""

# -- load balancers (tessera.model.load_balancers) ---------------------------------------

MAX_MEMBER_WEIGHT = 256
"""A pool member's `weight` (Neutron's LBaaS bound): its share of the pool's new
connections relative to the other members'."""

MAX_HEALTH_MONITOR_DELAY = 3600
"""A health monitor's `delay` and `timeout`, in seconds: a probe an hour apart already
finds a dead member far too late."""

MAX_POOL_MEMBERS = 1024
"""Members of one pool: each VIP connection picks one, so the data path keeps the
pool's member list at hand."""

MAX_LB_VIPS = 256
"""VIPs of one load balancer (a router's addresses and ports clients connect to)."""
