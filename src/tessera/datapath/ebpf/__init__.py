"""tessera.datapath.ebpf."""
