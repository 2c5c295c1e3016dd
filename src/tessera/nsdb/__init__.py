"""tessera.nsdb."""
