"""Option declarations shared by several resources, so they read the same everywhere.

Values stay text here; the commands parse them with `tessera.clikit.params` so that a bad
value is reported in one line naming the option.
"""

from __future__ import annotations

from typing import Annotated

import typer

IdArg = Annotated[str, typer.Argument(metavar="ID", help="The object's id.", show_default=False)]
NewId = Annotated[
    str | None, typer.Option("--id", metavar="UUID", help="Choose the new object's id.")
]
Name = Annotated[str | None, typer.Option("--name", help="A name for humans.")]
TenantId = Annotated[str | None, typer.Option("--tenant-id", metavar="TENANT")]
AdminState = Annotated[
    bool | None,
    typer.Option(
        "--up/--down",
        "--admin-state-up/--admin-state-down",
        help="Administrative state (a down device or port drops everything).",
        show_default=False,
    ),
]
InboundFilter = Annotated[
    str | None,
    typer.Option(
        "--inbound-filter-id",
        metavar="CHAIN_ID",
        help="Chain applied to packets entering ('none' clears).",
    ),
]
OutboundFilter = Annotated[
    str | None,
    typer.Option(
        "--outbound-filter-id",
        metavar="CHAIN_ID",
        help="Chain applied to packets leaving ('none' clears).",
    ),
]
