"""Resource classes, inventories and resource amounts: the values placement reasons
about, independent of where they are stored."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from tessera.placement.errors import Invalid

#: The standard resource classes, all divisible. Custom ones are CUSTOM_*.
STANDARD_CLASSES = ("VCPU", "MEMORY_MB", "DISK_GB", "PCI_DEVICE", "SRIOV_NET_VF")
#: Standard traits (os-traits' spelling); custom ones are CUSTOM_*.
STANDARD_TRAITS = (
    "HW_NIC_SRIOV",
    "HW_CPU_X86_AVX2",
    "HW_CPU_X86_AVX512F",
    "HW_GPU_API_VULKAN",
    "STORAGE_DISK_SSD",
    "COMPUTE_NET_ATTACH_INTERFACE",
)
NAME = re.compile(r"^[A-Z0-9_]{1,255}$")
CUSTOM = re.compile(r"^CUSTOM_[A-Z0-9_]{1,248}$")
MAX_AMOUNT = 2**53  # what JSON clients represent exactly


def check_name(kind: str, name: str, *, custom: bool = False) -> str:
    pattern = CUSTOM if custom else NAME
    if not pattern.fullmatch(name):
        rule = "CUSTOM_ and then A-Z, 0-9 or _" if custom else "A-Z, 0-9 or _"
        raise Invalid(f"{kind} {name!r} is not a valid name ({rule})")
    return name


@dataclass(frozen=True)
class Inventory:
    """One resource class on one provider. Capacity is (total - reserved) times the
    allocation ratio; one allocation takes between min_unit and max_unit, a multiple
    of step_size."""

    total: int
    reserved: int = 0
    allocation_ratio: float = 1.0
    min_unit: int = 1
    max_unit: int = 0  # 0: total
    step_size: int = 1
    #: The class is discrete (taken whole): copied from the class when the inventory
    #: is written, so that deciding a fit needs the provider's row alone.
    discrete: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.total <= MAX_AMOUNT:
            raise Invalid(f"total must be between 1 and {MAX_AMOUNT}, not {self.total}")
        if not 0 <= self.reserved <= self.total:
            raise Invalid(f"reserved must be between 0 and total ({self.total})")
        if not (0 < self.allocation_ratio <= 1000) or math.isnan(self.allocation_ratio):
            raise Invalid("allocation_ratio must be above 0 and at most 1000")
        if self.min_unit < 1 or self.step_size < 1:
            raise Invalid("min_unit and step_size must be at least 1")
        if self.max_unit and self.max_unit < self.min_unit:
            raise Invalid("max_unit must be at least min_unit")

    @property
    def capacity(self) -> int:
        return int((self.total - self.reserved) * self.allocation_ratio)

    @property
    def largest(self) -> int:
        return self.max_unit or self.total

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["max_unit"] = self.largest
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Inventory:
        known = {"total", "reserved", "allocation_ratio", "min_unit", "max_unit", "step_size"}
        known.add("discrete")
        unknown = set(data) - known - {"resource_provider_generation"}
        if unknown:
            raise Invalid(f"unknown inventory field(s): {', '.join(sorted(unknown))}")
        if "total" not in data:
            raise Invalid("an inventory needs a total")
        try:
            return cls(
                total=_int(data, "total"),
                reserved=_int(data, "reserved", 0),
                allocation_ratio=float(data.get("allocation_ratio", 1.0)),
                min_unit=_int(data, "min_unit", 1),
                max_unit=_int(data, "max_unit", 0),
                step_size=_int(data, "step_size", 1),
                discrete=bool(data.get("discrete", False)),
            )
        except (TypeError, ValueError):
            raise Invalid("allocation_ratio must be a number") from None


def _int(data: dict[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{key} must be an integer")
    return value


def parse_resources(text: str) -> dict[str, int]:
    """`VCPU:2,MEMORY_MB:2048` (the `resources=` of /allocation_candidates)."""
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, amount = part.strip().partition(":")
        if not sep or not amount.strip().isdigit():
            raise Invalid(f"resources: {part.strip()!r} is not CLASS:AMOUNT (e.g. VCPU:2)")
        check_name("resource class", name.strip())
        if name.strip() in out:
            raise Invalid(f"resources: {name.strip()} is given twice")
        out[name.strip()] = int(amount)
    return check_amounts(out)


def check_amounts(resources: dict[str, int]) -> dict[str, int]:
    if not resources:
        raise Invalid("a request needs at least one resource")
    for name, amount in resources.items():
        check_name("resource class", name)
        if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= MAX_AMOUNT:
            raise Invalid(f"{name}: the amount must be a positive integer")
    return resources


def parse_traits(text: str) -> list[str]:
    """`HW_NIC_SRIOV,CUSTOM_X` (the `required=` of /allocation_candidates)."""
    return [check_name("trait", t.strip()) for t in text.split(",") if t.strip()]


def fits(
    inventories: dict[str, Inventory],
    usages: dict[str, int],
    wanted: dict[str, int],
) -> dict[str, int] | None:
    """What an allocation of `wanted` takes from a provider with these inventories and
    usages, or None when it does not fit. A discrete class is taken whole: the
    allocation is the provider's whole capacity of it, and only when none is used."""
    taken: dict[str, int] = {}
    for name, amount in wanted.items():
        inv = inventories.get(name)
        if inv is None:
            return None
        used = usages.get(name, 0)
        if inv.discrete:
            if used or amount > inv.capacity:
                return None
            taken[name] = inv.capacity
            continue
        if amount < inv.min_unit or amount > inv.largest or amount % inv.step_size:
            return None
        if used + amount > inv.capacity:
            return None
        taken[name] = amount
    return taken
