"""Validated scalar types shared by every topology object.

Addresses are kept as normalised text in the model (what the REST API shows); the
simulation converts them to integers once, when it builds its snapshot.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


def _mac(value: str) -> str:
    if not _MAC_RE.match(value):
        raise ValueError(f"'{value}' is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return value.replace("-", ":").lower()


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"'{value}' is not an IPv4 address") from None


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"'{value}' is not a UUID") from None


MacAddr = Annotated[str, AfterValidator(_mac), Field(examples=["02:00:00:00:00:01"])]
IPv4Addr = Annotated[str, AfterValidator(_ipv4), Field(examples=["10.0.0.1"])]
Uuid = Annotated[
    str, AfterValidator(_uuid), Field(examples=["6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"])
]
PrefixLen = Annotated[int, Field(ge=0, le=32)]
VlanId = Annotated[int, Field(ge=0, le=4095)]
Name = Annotated[str, Field(max_length=255)]


def new_id() -> str:
    return str(uuid.uuid4())


class TesseraModel(BaseModel):
    """Base of every model: unknown fields are refused so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def network_of(addr: str, length: int) -> ipaddress.IPv4Network:
    """The network an (address, length) pair names; host bits are allowed, as in MidoNet."""
    return ipaddress.IPv4Network(f"{addr}/{length}", strict=False)


class PortRange(TesseraModel):
    """An inclusive L4 port range, as MidoNet's `tp_src`/`tp_dst` conditions."""

    start: int = Field(ge=0, le=65535)
    end: int = Field(ge=0, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.start > self.end:
            raise ValueError(f"port range start {self.start} is greater than end {self.end}")
        return self
