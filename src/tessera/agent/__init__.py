"""tessera.agent."""
