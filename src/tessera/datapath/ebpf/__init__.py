"""tessera's kernel fast path: eBPF programs on tc ingress and their maps.

* ``tessera_dp.c`` / ``flow.h`` -- the programs and the one definition of
  every map layout;
* :mod:`.layout` -- the ctypes mirror of ``flow.h`` (checked against BTF);
* :mod:`.bpf` -- the raw ``bpf(2)`` syscall (no fork per map operation);
* :mod:`.maps` -- one module per map: flows, megaflow masks, flood sets, the small ones;
* :mod:`.actions` -- the datapath's actions laid out as ``struct flow_action`` slots;
* :mod:`.loader` -- compile, load, pin, attach (:class:`EbpfFastPath`);
* :mod:`.upcall` -- the agent's AF_PACKET end of the miss path.

Import the submodules directly; this package imports nothing heavy.
"""
