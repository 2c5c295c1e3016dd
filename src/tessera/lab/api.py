"""The lab's few REST calls: health, host liveness, its tunnel zone, VM bindings.

The lab changes the virtual network only through the API, like any other client: what
a test sees through the API is what the lab did.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx

from tessera.client.errors import ApiError, ApiUnreachable
from tessera.client.rest import ApiClient
from tessera.lab.errors import LabError
from tessera.lab.state import LabState

TIMEOUT = httpx.Timeout(15.0, connect=2.0)


@contextlib.contextmanager
def client(state: LabState, timeout: httpx.Timeout = TIMEOUT) -> Iterator[ApiClient]:
    if state.api_url is None:
        raise LabError(f"lab {state.name} has no API yet: run `tessera lab up --name {state.name}`")
    api = ApiClient(state.api_url, timeout=timeout)
    try:
        yield api
    finally:
        api.close()


def health(api: ApiClient) -> dict[str, Any] | None:
    """The API's health answer, None while it cannot serve."""
    try:
        answer = api.get("/health")
    except (ApiError, ApiUnreachable):
        return None
    return answer if isinstance(answer, dict) else None


def hosts_alive(api: ApiClient) -> dict[str, bool]:
    """host id -> alive, as the API reports it."""
    return {str(h["id"]): bool(h.get("alive")) for h in api.get("/hosts") or []}


def wait_alive(api: ApiClient, host_ids: set[str], timeout: float) -> set[str]:
    """Wait until every host in `host_ids` is alive; returns those that are not."""
    deadline = time.monotonic() + timeout
    missing = set(host_ids)
    while True:
        try:
            alive = hosts_alive(api)
            missing = {h for h in host_ids if not alive.get(h)}
        except (ApiError, ApiUnreachable):
            pass
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.2)


def ensure_tunnel_zone(api: ApiClient, zone_id: str | None, name: str) -> str:
    """The id of the lab's VXLAN tunnel zone, made if it does not exist (any more)."""
    if zone_id is not None:
        try:
            api.get(f"/tunnel_zones/{zone_id}")
            return zone_id
        except ApiError as exc:
            if exc.status != 404:
                raise
    created = api.post("/tunnel_zones", {"name": name, "type": "vxlan"})
    return str(created["id"])


def port(api: ApiClient, port_id: str) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = api.get(f"/ports/{port_id}")
    except ApiError as exc:
        if exc.status in (404, 422):
            raise LabError(f"port {port_id} does not exist (create it first)") from None
        raise
    return answer


def bind(api: ApiClient, host_id: str, port_id: str, ifname: str) -> None:
    api.post(f"/hosts/{host_id}/ports", {"port_id": port_id, "interface_name": ifname})


def unbind_if_ours(api: ApiClient, host_id: str, port_id: str, ifname: str) -> bool:
    """Unbind `port_id` if it is still bound to `ifname` on `host_id`; a port moved to
    another VM since (or deleted) is left alone. True when it unbound."""
    try:
        current = api.get(f"/ports/{port_id}")
    except ApiError as exc:
        if exc.status in (404, 422):
            return False
        raise
    if current.get("host_id") != host_id or current.get("interface_name") != ifname:
        return False
    try:
        api.delete(f"/hosts/{host_id}/ports/{port_id}")
    except ApiError as exc:
        if exc.status != 404:
            raise
        return False
    return True


def neutron_port_mac(state: LabState, port_id: str) -> str | None:
    """The `mac_address` of the Neutron port `port_id` (a Neutron port and its tessera
    port share their id), None when it is a plain v1 port. A VM on a Neutron port must
    use that MAC: its fixed IP is handed out by DHCP to that MAC only."""
    if state.neutron_url is None:
        return None  # a lab from before the lab served Neutron
    url = f"{state.neutron_url}/v2.0/ports/{port_id}"
    try:
        answer = httpx.get(url, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise LabError(
            f"lab {state.name}: the Neutron API at {state.neutron_url} does not answer "
            f"({exc}); `tessera lab up --name {state.name}` repairs it, or pass --mac"
        ) from None
    if answer.status_code == 404:
        return None
    try:
        answer.raise_for_status()
        mac = answer.json()["port"]["mac_address"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        raise LabError(
            f"lab {state.name}: the Neutron API answered GET {url} with "
            f"{answer.status_code} {answer.text[:200]!r}; pass --mac"
        ) from None
    return str(mac).lower() if mac else None
