"""tessera.lab."""
