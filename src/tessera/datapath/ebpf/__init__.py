"""tessera's kernel fast path: eBPF programs on tc ingress and their maps.

* ``tessera_dp.c`` / ``flow.h`` -- the programs and the one definition of
  every map layout;
* :mod:`.layout` -- the ctypes mirror of ``flow.h`` (checked against BTF);
* :mod:`.bpf` -- the raw ``bpf(2)`` syscall (no fork per map operation);
* :mod:`.maps` -- typed maps, megaflow masks, flood sets, ``reconcile``;
* :mod:`.actions` -- flow actions as values;
* :mod:`.loader` -- compile, load, pin, attach (:class:`EbpfFastPath`);
* :mod:`.upcall` -- the agent's AF_PACKET end of the miss path.

Import the submodules directly; this package imports nothing heavy.
"""
