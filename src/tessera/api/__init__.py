"""tessera.api."""
