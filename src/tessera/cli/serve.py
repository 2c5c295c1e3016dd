"""`tessera api serve`: start the cluster service (REST API, /metrics, /docs).

The server lives in `tessera.api.server`; it is imported only here, when the command
runs, so that everyday CLI commands never pay for FastAPI and uvicorn.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tessera.client.errors import UserError
from tessera.clikit.commands import sub_app
from tessera.clikit.params import convert_one, parse_listen, parse_nsdb_url

DEFAULT_NSDB = "zk://127.0.0.1:2181/tessera"  # tessera.api.server's and the agent's too
DEFAULT_LISTEN = "127.0.0.1:8181"
NSDB_ENV = "TESSERA_NSDB"

api_app = sub_app("The cluster service: REST API, Prometheus /metrics, OpenAPI /docs.")


@api_app.command("serve")
def serve(
    nsdb: Annotated[
        str,
        typer.Option(
            "--nsdb",
            metavar="zk://HOST:PORT/ROOT|memory",
            envvar=NSDB_ENV,
            help="The network state database.",
        ),
    ] = DEFAULT_NSDB,
    listen: Annotated[
        str, typer.Option("--listen", metavar="ADDR:PORT", help="Where to serve HTTP.")
    ] = DEFAULT_LISTEN,
    neutron_listen: Annotated[
        str | None,
        typer.Option(
            "--neutron-listen",
            metavar="ADDR:PORT",
            help="Also serve the Neutron v2.0 API there (docs/neutron.md).",
        ),
    ] = None,
    cassandra: Annotated[
        str | None,
        typer.Option(
            "--cassandra",
            metavar="HOST[,HOST]",
            envvar="TESSERA_CASSANDRA",
            help="Cassandra contact points for the placement API (docs/placement.md).",
        ),
    ] = None,
) -> None:
    """Serve the REST API (and, with --neutron-listen, the Neutron API) until
    interrupted."""
    nsdb_url = convert_one("--nsdb", nsdb, parse_nsdb_url)
    address = convert_one("--listen", listen, parse_listen)
    services: dict[str, dict[str, object]] = {}
    if cassandra:
        contacts = [c.strip() for c in cassandra.split(",") if c.strip()]
        services["api"] = {"cassandra": contacts}
    if neutron_listen is not None:
        neutron = convert_one("--neutron-listen", neutron_listen, parse_listen)
        services["neutron"] = {"enabled": True, "listen": neutron}
    try:
        from tessera.api.server import ServeError, run
    except ImportError as exc:
        raise UserError(f"the API server is unavailable: {exc}") from None
    try:
        run(nsdb_url, address, services)
    except ServeError as exc:  # cannot start: port taken, NSDB unreachable...
        raise UserError(str(exc)) from None
