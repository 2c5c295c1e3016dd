"""`tessera lab`: an emulated cloud on one machine (docs/lab.md).

Hosts and VMs are network namespaces; each host runs a real `tessera agent`; ZooKeeper
and the API run in the root namespace and reach the agents through a relay. Modules:
`names` (naming and address plan), `state` (the lab's directory, state file and lock),
`procs` (detached processes found again by pid file), `netns` (namespaces and links),
`relay` (ZooKeeper inside each host namespace), `services` (ZooKeeper, API, relay),
`hosts` (underlay, host namespaces, agents), `vms` and `dhcp` (VMs), `api` (the few
REST calls the lab makes), `up`, `down`, `faults`, `status`, and `cli` (the commands).
`sandbox` holds the throwaway namespaces tests and benchmarks make and delete.
"""
