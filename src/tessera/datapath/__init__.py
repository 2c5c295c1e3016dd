"""tessera.datapath."""
