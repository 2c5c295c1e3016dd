"""tessera.packet."""
