"""`create_neutron_app(nsdb)`: the Neutron v2.0 API over the NSDB, an ASGI app of its
own (served on its own port, 9696 by default, beside the v1 API).

No Keystone: `X-Auth-Token` is accepted and ignored, as python-openstackclient sends
one (`notused`) with `--os-auth-type none`. Every error is a NeutronError body
(`errors`); lists follow Neutron's semantics (`listing`); each write is one NSDB
transaction that writes the Neutron object and its tessera twin together
(`networks`, `subnets`, `ports`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Body, FastAPI, Request, Response

from tessera.model import StoredObject
from tessera.model.neutron import (
    NeutronFloatingIp,
    NeutronNetwork,
    NeutronObject,
    NeutronPort,
    NeutronRouter,
    NeutronSecurityGroup,
    NeutronSecurityGroupRule,
    NeutronSubnet,
)
from tessera.neutron import (
    extensions,
    floatingips,
    listing,
    networks,
    ports,
    routers,
    security_groups,
    subnets,
    values,
)
from tessera.neutron.errors import NeutronError, bad_request, install, not_found
from tessera.neutron.networks import now
from tessera.nsdb.base import Nsdb
from tessera.nsdb.store.transaction import Transaction, run

DEFAULT_PORT = 9696


class _Collection:
    """What the generic routes need to know of one resource type."""

    def __init__(
        self,
        resource: str,
        cls: type[NeutronObject],
        missing: str,
        module: Any,
    ) -> None:
        self.resource = resource
        self.collection = resource + "s"
        self.path = self.collection.replace("_", "-")  # security_groups: /security-groups
        self.cls = cls
        self.missing = missing
        self.module = module

    def not_found(self, id: str) -> NeutronError:
        return not_found(
            self.missing, f"{self.resource.replace('_', ' ').capitalize()} {id} could not be found."
        )

    def check_id(self, id: str) -> str:
        """Ids are UUIDs: anything else (a name the client tries first) is a 404."""
        try:
            return str(uuid.UUID(id))
        except ValueError:
            raise self.not_found(id) from None


_COLLECTIONS = {
    c.collection: c
    for c in (
        _Collection("network", NeutronNetwork, "NetworkNotFound", networks),
        _Collection("subnet", NeutronSubnet, "SubnetNotFound", subnets),
        _Collection("port", NeutronPort, "PortNotFound", ports),
        _Collection("router", NeutronRouter, "RouterNotFound", routers),
        _Collection("floatingip", NeutronFloatingIp, "FloatingIPNotFound", floatingips),
        _Collection(
            "security_group", NeutronSecurityGroup, "SecurityGroupNotFound", security_groups
        ),
        _Collection(
            "security_group_rule",
            NeutronSecurityGroupRule,
            "SecurityGroupRuleNotFound",
            security_groups.RuleResource,
        ),
    )
}


def _project_header(request: Request) -> str | None:
    return request.headers.get("x-project-id") or request.headers.get("x-tenant-id")


def create_neutron_app(nsdb: Nsdb) -> FastAPI:
    """The Neutron v2.0 API app over `nsdb` (the caller keeps the NSDB open)."""
    app = FastAPI(
        title="tessera Neutron v2.0 API",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install(app)

    @app.get("/")
    def versions(request: Request) -> dict[str, Any]:
        href = f"{request.base_url}v2.0/"
        return {
            "versions": [
                {"id": "v2.0", "status": "CURRENT", "links": [{"href": href, "rel": "self"}]}
            ]
        }

    @app.get("/v2.0")
    @app.get("/v2.0/")
    def resources(request: Request) -> dict[str, Any]:
        base = f"{request.base_url}v2.0/"
        return {
            "resources": [
                {
                    "name": c.resource,
                    "collection": c.collection,
                    "links": [{"href": base + c.path, "rel": "self"}],
                }
                for c in _COLLECTIONS.values()
            ]
        }

    @app.get("/v2.0/extensions")
    def list_extensions() -> dict[str, Any]:
        return {"extensions": extensions.all_views()}

    @app.get("/v2.0/extensions/{alias}")
    def show_extension(alias: str) -> dict[str, Any]:
        if alias not in extensions.EXTENSIONS:
            raise not_found("ExtensionNotFound", f"Extension with alias {alias} does not exist")
        return {"extension": extensions.view(alias)}

    @app.get("/v2.0/tenants")
    @app.get("/v2.0/tenants/{project_id}")
    def tenant(project_id: str = "") -> Response:
        # The client resolves `--project X` here (by id, then by name in the list); a
        # 403 makes it take X as the project id.
        raise NeutronError(403, "HTTPForbidden", "Projects are not managed by this API.")

    for coll in _COLLECTIONS.values():
        _routes(app, nsdb, coll)
    _router_interface_routes(app, nsdb)
    return app


def _router_interface_routes(app: FastAPI, nsdb: Nsdb) -> None:
    """`PUT /v2.0/routers/{id}/add_router_interface` and `remove_router_interface`."""
    c = _COLLECTIONS["routers"]

    def add(id: str, payload: Any = Body(None)) -> dict[str, Any]:
        return routers.add_interface(nsdb, c.check_id(id), payload)

    def remove(id: str, payload: Any = Body(None)) -> dict[str, Any]:
        return routers.remove_interface(nsdb, c.check_id(id), payload)

    app.add_api_route("/v2.0/routers/{id}/add_router_interface", add, methods=["PUT"])
    app.add_api_route("/v2.0/routers/{id}/remove_router_interface", remove, methods=["PUT"])


def _hidden(nsdb: Nsdb, request: Request, c: _Collection, item: dict[str, Any]) -> bool:
    """Neutron's policy for what a project sees, where tempest checks it: a floating IP
    only by its project (`get_floatingip`: admin or owner); a subnet by its project or
    when its network is shared (`get_subnet`), so an external network's subnets stay
    hidden from other projects, which see the network itself (to set gateways and take
    floating IPs from it). Applies when the caller is known (a Keystone-authenticated
    request names its project and roles); without a project (`--os-auth-type none`)
    everything is visible, as before."""
    if c.cls not in (NeutronSubnet, NeutronFloatingIp):
        return False
    project = _project_header(request)
    roles = {r.strip() for r in request.headers.get("x-roles", "").split(",")}
    if project is None or "admin" in roles or item.get("project_id") == project:
        return False
    if c.cls is NeutronFloatingIp:
        return True
    try:
        network = networks.show(nsdb, item["network_id"])
    except NeutronError:
        return False
    return not network.get("shared") and network.get("project_id") != project


def _routes(app: FastAPI, nsdb: Nsdb, c: _Collection) -> None:
    base = f"/v2.0/{c.path}"
    module = c.module

    def list_items(request: Request) -> dict[str, Any]:
        url = f"{request.base_url}v2.0/{c.path}"
        if c.cls is NeutronSecurityGroup:  # a project's first listing makes its default
            query = request.query_params
            wanted = query.get("project_id") or query.get("tenant_id")
            security_groups.ensure_default(nsdb, wanted or _project_header(request))
        items = module.listing(nsdb)
        items = [item for item in items if not _hidden(nsdb, request, c, item)]
        return listing.list_response(c.collection, items, request.query_params.multi_items(), url)

    def create_item(
        request: Request, response: Response, payload: Any = Body(None)
    ) -> dict[str, Any]:
        response.status_code = 201
        project = _project_header(request)
        bulk = values.bulk_bodies(payload, c.resource)
        if bulk is not None:  # all or nothing: one transaction for every item
            writes = [module.creator(nsdb, item, project) for item in bulk]
            made = run(
                nsdb, f"creating {len(writes)} {c.collection}", lambda tx: [w(tx) for w in writes]
            )
            return {c.collection: made}
        body = values.resource_body(payload, c.resource)
        return {c.resource: module.create(nsdb, body, project)}

    def show_item(id: str, request: Request) -> dict[str, Any]:
        fields = [f for k, f in request.query_params.multi_items() if k == "fields" and f]
        item = module.show(nsdb, c.check_id(id))
        if _hidden(nsdb, request, c, item):
            raise c.not_found(id)
        return {c.resource: listing.select(item, fields)}

    def update_item(id: str, payload: Any = Body(None)) -> dict[str, Any]:
        body = values.resource_body(payload, c.resource)
        return {c.resource: module.update(nsdb, c.check_id(id), body)}

    def delete_item(id: str) -> Response:
        module.delete(nsdb, c.check_id(id))
        return Response(status_code=204)

    app.add_api_route(base, list_items, methods=["GET"])
    app.add_api_route(base, create_item, methods=["POST"])
    app.add_api_route(base + "/{id}", show_item, methods=["GET"])
    app.add_api_route(base + "/{id}", update_item, methods=["PUT"])
    app.add_api_route(base + "/{id}", delete_item, methods=["DELETE"])
    _tag_routes(app, nsdb, c, base)


def _tag_routes(app: FastAPI, nsdb: Nsdb, c: _Collection, base: str) -> None:
    """Neutron's tag API (`standard-attr-tag`): `openstack ... --tag` uses it."""

    def change(id: str, how: Callable[[list[str]], list[str]]) -> list[str]:
        id = c.check_id(id)

        def write(tx: Transaction) -> list[str]:
            obj = tx.find(c.cls.kind, id)
            if not isinstance(obj, NeutronObject):
                raise c.not_found(id)
            tags = how(list(obj.tags))
            for tag in tags:
                values.text("tags", tag, 255)
            new: StoredObject = obj.model_copy(
                update={
                    "tags": tags,
                    "updated_at": now(),
                    "revision_number": obj.revision_number + 1,
                }
            )
            tx.put(new)
            return tags

        return run(nsdb, f"tagging {c.resource} {id}", write)

    def current(id: str) -> list[str]:
        obj = Transaction(nsdb).find(c.cls.kind, c.check_id(id))
        if not isinstance(obj, NeutronObject):
            raise c.not_found(id)
        return list(obj.tags)

    def get_tags(id: str) -> dict[str, Any]:
        return {"tags": current(id)}

    def put_tags(id: str, payload: Any = Body(None)) -> dict[str, Any]:
        if not isinstance(payload, dict) or "tags" not in payload:
            raise bad_request('Invalid input: expected {"tags": [...]}.')
        tags = values.string_list("tags", payload["tags"])
        return {"tags": change(id, lambda _: sorted(set(tags)))}

    def delete_tags(id: str) -> Response:
        change(id, lambda _: [])
        return Response(status_code=204)

    def get_tag(id: str, tag: str) -> Response:
        if tag not in current(id):
            raise not_found("TagNotFound", f"Tag {tag} could not be found for {c.resource} {id}.")
        return Response(status_code=204)

    def put_tag(id: str, tag: str) -> Response:
        change(id, lambda tags: sorted({*tags, tag}))
        return Response(status_code=201)

    def delete_tag(id: str, tag: str) -> Response:
        def drop(tags: list[str]) -> list[str]:
            if tag not in tags:
                raise not_found(
                    "TagNotFound", f"Tag {tag} could not be found for {c.resource} {id}."
                )
            return [t for t in tags if t != tag]

        change(id, drop)
        return Response(status_code=204)

    app.add_api_route(base + "/{id}/tags", get_tags, methods=["GET"])
    app.add_api_route(base + "/{id}/tags", put_tags, methods=["PUT"])
    app.add_api_route(base + "/{id}/tags", delete_tags, methods=["DELETE"])
    app.add_api_route(base + "/{id}/tags/{tag}", get_tag, methods=["GET"])
    app.add_api_route(base + "/{id}/tags/{tag}", put_tag, methods=["PUT"])
    app.add_api_route(base + "/{id}/tags/{tag}", delete_tag, methods=["DELETE"])
