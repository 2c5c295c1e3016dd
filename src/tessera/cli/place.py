"""`tessera place ...`: placement (docs/placement.md) — resource providers, their
inventories, allocation candidates, and allocating (the scheduler picks the provider)
or freeing a consumer's resources. The API server must run with --cassandra."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlencode

import typer

from tessera.client.errors import BadArgument
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.session import Session

P = "/placement"

place_app = sub_app("Placement: resource providers, inventories and allocations.")
inventory_app = sub_app("A resource provider's inventories.")
place_app.add_typer(inventory_app, name="inventory")

PROVIDER_COLUMNS: list[Column] = [
    id_column("uuid"),
    column("name"),
    column("generation"),
    Column("usage", lambda row: _usage(row)),
    Column("traits", lambda row: ",".join(row.get("traits") or []) or "-"),
]
CANDIDATE_COLUMNS: list[Column] = [
    id_column("uuid"),
    Column("takes", lambda row: _amounts(row["takes"])),
    Column("usage", lambda row: _usage(row)),
]

ProviderArg = Annotated[str, typer.Argument(metavar="PROVIDER_UUID", show_default=False)]
ConsumerArg = Annotated[str, typer.Argument(metavar="CONSUMER_UUID", show_default=False)]
Resources = Annotated[
    str,
    typer.Option(
        "--resources", "-r", metavar="CLASS:N[,CLASS:N]", help="e.g. VCPU:2,MEMORY_MB:2048"
    ),
]
Required = Annotated[
    list[str] | None,
    typer.Option("--required", metavar="TRAIT", help="A trait the provider must have (repeat)."),
]


def _amounts(amounts: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(amounts.items())) or "-"


def _usage(row: Mapping[str, Any]) -> str:
    inventories = row.get("inventories") or {}
    usages = row.get("usages") or {}
    parts = []
    for name, inv in sorted(inventories.items()):
        capacity = int((inv["total"] - inv["reserved"]) * inv["allocation_ratio"])
        parts.append(f"{name} {usages.get(name, 0)}/{capacity}")
    return ", ".join(parts) or "-"


def _resources(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, amount = part.strip().partition(":")
        if not sep or not amount.isdigit():
            raise BadArgument(f"--resources: {part.strip()!r} is not CLASS:N (e.g. VCPU:2)")
        out[name] = int(amount)
    return out


@command(place_app, "providers")
def providers(s: Session) -> None:
    """List resource providers with their usage."""
    rows = s.api.get(f"{P}/resource_providers")["resource_providers"]
    s.out.objects(rows, PROVIDER_COLUMNS, empty="no resource providers (tessera host report)")


@command(place_app, "show")
def show(s: Session, provider: ProviderArg) -> None:
    """Show one resource provider: inventories, usages, traits, aggregates."""
    s.out.obj(s.api.get(f"{P}/resource_providers/{seg(provider)}"))


@command(inventory_app, "set")
def inventory_set(
    s: Session,
    provider: ProviderArg,
    inventory: Annotated[
        list[str],
        typer.Argument(
            metavar="CLASS=TOTAL[,reserved=N,allocation_ratio=F,min_unit=N,max_unit=N,step_size=N]...",
            show_default=False,
        ),
    ],
) -> None:
    """Replace the provider's inventories (at its current generation)."""
    inventories: dict[str, dict[str, Any]] = {}
    for spec in inventory:
        head, *options = spec.split(",")
        name, sep, total = head.partition("=")
        if not sep or not total.isdigit():
            raise BadArgument(f"{spec!r}: expected CLASS=TOTAL[,option=value...]")
        entry: dict[str, Any] = {"total": int(total)}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep:
                raise BadArgument(f"{option!r}: expected option=value")
            try:
                entry[key] = float(value) if key == "allocation_ratio" else int(value)
            except ValueError:
                raise BadArgument(f"{option!r}: {key} must be a number") from None
        inventories[name] = entry
    path = f"{P}/resource_providers/{seg(provider)}"
    generation = s.api.get(path)["generation"]
    body = {"resource_provider_generation": generation, "inventories": inventories}
    s.out.obj(s.api.put(f"{path}/inventories", body))


@command(place_app, "candidates")
def candidates(
    s: Session,
    resources: Resources,
    required: Required = None,
    weigher: Annotated[str, typer.Option("--weigher", help="spread or pack")] = "spread",
) -> None:
    """Providers with room for the resources, best first."""
    query = {"resources": resources, "weigher": weigher}
    if required:
        query["required"] = ",".join(required)
    answer = s.api.get(f"{P}/allocation_candidates?{urlencode(query)}")
    rows = []
    for request in answer["allocation_requests"]:
        [(uuid, alloc)] = request["allocations"].items()
        summary = answer["provider_summaries"][uuid]["resources"]
        rows.append(
            {
                "uuid": uuid,
                "takes": alloc["resources"],
                "inventories": {
                    k: {"total": v["capacity"], "reserved": 0, "allocation_ratio": 1.0}
                    for k, v in summary.items()
                },
                "usages": {k: v["used"] for k, v in summary.items()},
            }
        )
    s.out.objects(rows, CANDIDATE_COLUMNS, empty="no provider can take that")


@command(place_app, "allocate")
def allocate(
    s: Session,
    resources: Resources,
    required: Required = None,
    consumer: Annotated[
        str | None, typer.Option("--consumer", metavar="UUID", help="Default: a new one.")
    ] = None,
    weigher: Annotated[str, typer.Option("--weigher", help="spread or pack")] = "spread",
) -> None:
    """Let the scheduler place a consumer: it picks a provider and claims."""
    body: dict[str, Any] = {
        "resources": _resources(resources),
        "required": list(required or []),
        "weigher": weigher,
    }
    if consumer:
        body["consumer"] = consumer
    s.out.obj(s.api.post(f"{P}/requests", body))


@command(place_app, "allocations")
def allocations(s: Session, consumer: ConsumerArg) -> None:
    """A consumer's allocations, per provider."""
    s.out.obj(s.api.get(f"{P}/allocations/{seg(consumer)}"))


@command(place_app, "free")
def free(s: Session, consumer: ConsumerArg) -> None:
    """Free every allocation of a consumer."""
    s.api.delete(f"{P}/allocations/{seg(consumer)}")
    s.out.done(f"freed the allocations of {consumer}")
