"""Checking what a Neutron request body says, attribute by attribute, with Neutron's
400 messages: clients send strings for numbers (`--mtu 1400` arrives as "1400"),
`true`/`false` strings for booleans, and sometimes attributes we do not implement,
which are refused by name rather than silently dropped."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from tessera.neutron.errors import bad_request

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


def resource_body(payload: Any, resource: str) -> dict[str, Any]:
    """The `{"<resource>": {...}}` envelope's content."""
    if not isinstance(payload, dict) or not isinstance(payload.get(resource), dict):
        raise bad_request(f'Resource body required: expected {{"{resource}": {{...}}}}.')
    return dict(payload[resource])


def bulk_bodies(payload: Any, resource: str) -> list[dict[str, Any]] | None:
    """The items of a bulk creation (`{"<resource>s": [{...}, ...]}`), else None."""
    if not isinstance(payload, dict) or set(payload) != {resource + "s"}:
        return None
    items = payload[resource + "s"]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise bad_request(f"Bulk creation needs a non-empty list of {resource} objects.")
    return [dict(i) for i in items]


def refuse_unknown(body: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"Unrecognized attribute(s) '{', '.join(unknown)}'", "HTTPBadRequest")


def refuse_fixed(body: Mapping[str, Any], fixed: Iterable[str]) -> None:
    """Attributes that exist but cannot be changed by an update."""
    sent = sorted(set(body) & set(fixed))
    if sent:
        raise bad_request(f"Cannot update read-only attribute {sent[0]}")


def boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise bad_request(f"Invalid input for {name}. Reason: '{value}' is not a valid boolean value.")


def integer(name: str, value: Any, low: int, high: int) -> int:
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise bad_request(
            f"Invalid input for {name}. Reason: '{value}' is not an integer."
        ) from None
    if not low <= number <= high:
        raise bad_request(
            f"Invalid input for {name}. Reason: '{number}' is not in range {low} through {high}."
        )
    return number


def text(name: str, value: Any, limit: int = 255) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"Invalid input for {name}. Reason: '{value}' is not a valid string.")
    if len(value) > limit:
        raise bad_request(
            f"Invalid input for {name}. Reason: '{value}' exceeds maximum length of {limit}."
        )
    return value


def string_list(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"Invalid input for {name}. Reason: '{value}' is not a list of strings.")
    return list(value)


def dict_list(name: str, value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise bad_request(f"Invalid input for {name}. Reason: '{value}' is not a list of dicts.")
    return [dict(v) for v in value]


def ipv4(name: str, value: Any) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise bad_request(
            f"Invalid input for {name}. Reason: '{value}' is not a valid IPv4 address."
        ) from None


def ipv4_network(name: str, value: Any, strict: bool = True) -> ipaddress.IPv4Network:
    """An IPv4 CIDR; host bits set are refused as Neutron does ("not a recommended
    CIDR"). IPv6 is refused here: tessera's DHCP and routing are IPv4 only."""
    if not isinstance(value, str) or "/" not in value:
        raise bad_request(f"Invalid input for {name}. Reason: '{value}' is not a valid IP subnet.")
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise bad_request(
            f"Invalid input for {name}. Reason: '{value}' is not a valid IP subnet."
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise bad_request(f"Invalid input for {name}. Reason: IPv6 subnets are not supported yet.")
    if strict and str(net) != value.strip():
        raise bad_request(
            f"Invalid input for {name}. Reason: '{value}' isn't a recommended CIDR, "
            f"use '{net}' instead."
        )
    return net


def mac(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _MAC_RE.match(value):
        raise bad_request(
            f"Invalid input for {name}. Reason: '{value}' is not a valid MAC address."
        )
    mac_addr = value.replace("-", ":").lower()
    if int(mac_addr[:2], 16) & 1 or mac_addr == "00:00:00:00:00:00":
        raise bad_request(
            f"Invalid input for {name}. Reason: '{value}' is not a valid unicast MAC address."
        )
    return mac_addr


def project(body: Mapping[str, Any], header: str | None) -> str:
    """The owning project: `project_id` or `tenant_id` (which must agree), else the
    `X-Project-Id` header (keystonemiddleware's), else "" (no Keystone: none known)."""
    given = {k: body[k] for k in ("project_id", "tenant_id") if body.get(k) is not None}
    values = {text(k, v) for k, v in given.items()}
    if len(values) > 1:
        raise bad_request("'project_id' and 'tenant_id' do not match.")
    if values:
        return values.pop()
    return header or ""
