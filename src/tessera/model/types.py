"""Validated scalar types shared by every topology object.

Addresses are kept as normalised text in the model (what the REST API shows); the
simulation converts them to integers once, when it builds its snapshot.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tessera.model.text import STORED_CONTEXT
from tessera.model.text import InterfaceName as InterfaceName  # re-exported: Name lived here
from tessera.model.text import Name as Name

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


def _mac(value: str) -> str:
    if not _MAC_RE.fullmatch(value):
        raise ValueError(f"'{value}' is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return value.replace("-", ":").lower()


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"'{value}' is not an IPv4 address") from None


def _uuid(value: str) -> str:
    if not _UUID_RE.fullmatch(value):
        raise ValueError(f"'{value}' is not a UUID (expected 8-4-4-4-12 hexadecimal digits)")
    return str(uuid.UUID(value))


# The OpenAPI schema declares these patterns (below): exactly what each validator accepts,
# so that a schema-driven client or fuzzer never sends a value the server refuses.
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
UUID_PATTERN = _UUID_RE.pattern
MAC_PATTERN = _MAC_RE.pattern
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4_PATTERN = rf"^({_OCTET}\.){{3}}{_OCTET}$"

MacAddr = Annotated[
    str,
    AfterValidator(_mac),
    Field(examples=["02:00:00:00:00:01"], json_schema_extra={"pattern": MAC_PATTERN}),
]
IPv4Addr = Annotated[
    str,
    AfterValidator(_ipv4),
    Field(examples=["10.0.0.1"], json_schema_extra={"format": "ipv4", "pattern": IPV4_PATTERN}),
]
Uuid = Annotated[
    str,
    AfterValidator(_uuid),
    Field(
        examples=["6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"],
        json_schema_extra={"format": "uuid", "pattern": UUID_PATTERN},
    ),
]
PrefixLen = Annotated[int, Field(ge=0, le=32)]
VlanId = Annotated[int, Field(ge=0, le=4095)]


RULE_ERROR = "object_rule"
"""The pydantic error type of a rule the JSON schema cannot state (a MAC that must be
unicast): the API answers it 400, an invalid object, never 422, a malformed request."""


def rule_error(message: str) -> PydanticCustomError:
    """A validation error for a rule the schema cannot state (see `RULE_ERROR`)."""
    return PydanticCustomError(RULE_ERROR, message)


def new_id() -> str:
    return str(uuid.uuid4())


class TesseraModel(BaseModel):
    """Base of every model: unknown fields are refused so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    # Fields no whole-object check reads: a copy changing only these validates just the
    # new values (the store sets a rule's `position` on every read of a rule).
    independent_fields: ClassVar[frozenset[str]] = frozenset()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with `update` applied, validated again (pydantic's own copy is not).

        The store grows member lists (rules of a chain, ports of a group, hosts of a
        zone) and sets bindings through copies: unvalidated, they would slip past every
        limit and check the model declares. An object stored before a check existed
        (read back under `STORED_CONTEXT`) is copied under that context too, so that
        it stays usable; the limits on sizes hold for it all the same. The fields set
        stay those of the original plus the updated ones, as with pydantic's copy."""
        if not update:
            return super().model_copy(deep=deep)
        cls = type(self)
        if update.keys() <= cls.independent_fields:
            checked = {k: _field_adapter(cls, k).validate_python(v) for k, v in update.items()}
            return super().model_copy(update=checked, deep=deep)
        data = {**self.model_dump(), **update}
        try:
            copy = cls.model_validate(data)
        except ValidationError:
            if self._passes_strict_checks():
                raise  # the update itself is what the model refuses
            copy = cls.model_validate(data, context=STORED_CONTEXT)
        object.__setattr__(copy, "__pydantic_fields_set__", self.model_fields_set | set(update))
        return super(TesseraModel, copy).model_copy(deep=True) if deep else copy

    def _passes_strict_checks(self) -> bool:
        try:
            type(self).model_validate(self.model_dump())
        except ValidationError:
            return False
        return True


@functools.cache
def _field_adapter(cls: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """A validator of one field of `cls` on its own (its type and constraints)."""
    info = cls.model_fields[name]
    form: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return TypeAdapter(form)


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
