"""The one error of the Cassandra package."""


class CassandraError(RuntimeError):
    """Cassandra cannot be found, started, reached or stopped; the message says why in
    one line (and what to run when something is not installed)."""
