"""tessera.simulation."""
