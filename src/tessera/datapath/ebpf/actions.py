"""Flow actions as values, and their encoding into ``struct flow_value``.

The agent builds these from a simulation result; they are frozen and
hashable so desired-flow tables can compare them cheaply with what the
kernel holds (:func:`decode_actions` is the exact inverse of
:func:`encode_actions`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from tessera.datapath.ebpf.layout import (
    ACT_F_PEER,
    FLOW_MAX_ACTIONS,
    ActionType,
    FlowAction,
    FlowValue,
    format_mac,
    parse_mac,
)

__all__ = [
    "Action",
    "DecTtl",
    "Drop",
    "OutputLocal",
    "OutputTunnel",
    "SetEthDst",
    "SetEthSrc",
    "ToUserspace",
    "decode_actions",
    "encode_actions",
]


@dataclass(frozen=True, slots=True, init=False)
class SetEthSrc:
    """Rewrite the Ethernet source MAC."""

    mac: bytes

    def __init__(self, mac: str | bytes) -> None:
        object.__setattr__(self, "mac", parse_mac(mac))

    def __repr__(self) -> str:
        return f"SetEthSrc({format_mac(self.mac)})"


@dataclass(frozen=True, slots=True, init=False)
class SetEthDst:
    """Rewrite the Ethernet destination MAC."""

    mac: bytes

    def __init__(self, mac: str | bytes) -> None:
        object.__setattr__(self, "mac", parse_mac(mac))

    def __repr__(self) -> str:
        return f"SetEthDst({format_mac(self.mac)})"


@dataclass(frozen=True, slots=True)
class DecTtl:
    """Decrement the IPv4 TTL; a TTL that would reach 0 goes to the agent."""

    n: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.n <= 255:
            raise ValueError(f"DecTtl n={self.n} out of 1..255")


@dataclass(frozen=True, slots=True)
class OutputLocal:
    """Send to a device of the host namespace.

    ``peer=True``: ``ifindex`` is the host end of a veth whose other end is in
    another namespace; the program then uses ``bpf_redirect_peer`` and the
    packet enters that namespace without a second trip through the backlog.
    """

    ifindex: int
    peer: bool = False


@dataclass(frozen=True, slots=True, init=False)
class OutputTunnel:
    """VXLAN to ``remote_ip`` with ``vni`` (the egress port's tunnel key).

    ``ifindex`` 0 means the VXLAN device from the config map.
    """

    vni: int
    remote_ip: int
    ifindex: int = 0

    def __init__(self, vni: int, remote_ip: int | str | ipaddress.IPv4Address, ifindex: int = 0):
        if not 0 <= vni < 1 << 24:
            raise ValueError(f"VNI {vni} does not fit 24 bits")
        ip = remote_ip if isinstance(remote_ip, int) else int(ipaddress.IPv4Address(remote_ip))
        object.__setattr__(self, "vni", vni)
        object.__setattr__(self, "remote_ip", ip)
        object.__setattr__(self, "ifindex", ifindex)

    def __repr__(self) -> str:
        return (
            f"OutputTunnel(vni={self.vni}, remote_ip={ipaddress.IPv4Address(self.remote_ip)}, "
            f"ifindex={self.ifindex})"
        )


@dataclass(frozen=True, slots=True)
class Drop:
    pass


@dataclass(frozen=True, slots=True)
class ToUserspace:
    """Send every packet of the flow to the agent (handled like a miss)."""


Action: TypeAlias = SetEthSrc | SetEthDst | DecTtl | OutputLocal | OutputTunnel | Drop | ToUserspace


def encode_actions(actions: Sequence[Action], value: FlowValue) -> None:
    """Write ``actions`` into ``value.actions``/``n_actions`` (counters untouched)."""
    if len(actions) > FLOW_MAX_ACTIONS:
        raise ValueError(f"{len(actions)} actions, the datapath takes at most {FLOW_MAX_ACTIONS}")
    value.n_actions = len(actions)
    for i, act in enumerate(actions):
        slot: FlowAction = value.actions[i]
        match act:
            case SetEthSrc(mac=mac):
                slot.type = ActionType.SET_ETH_SRC
                slot.mac[:] = mac
            case SetEthDst(mac=mac):
                slot.type = ActionType.SET_ETH_DST
                slot.mac[:] = mac
            case DecTtl(n=n):
                slot.type = ActionType.DEC_TTL
                slot.ttl_dec = n
            case OutputLocal(ifindex=ifindex, peer=peer):
                slot.type = ActionType.OUTPUT_LOCAL
                slot.ifindex = ifindex
                slot.flags = ACT_F_PEER if peer else 0
            case OutputTunnel():
                slot.type = ActionType.OUTPUT_TUNNEL
                slot.vni = act.vni
                slot.remote_ip = act.remote_ip
                slot.ifindex = act.ifindex
            case Drop():
                slot.type = ActionType.DROP
            case ToUserspace():
                slot.type = ActionType.TO_USERSPACE
            case _:
                raise TypeError(f"not a datapath action: {act!r}")


def decode_actions(value: FlowValue) -> tuple[Action, ...]:
    """The inverse of :func:`encode_actions`."""
    out: list[Action] = []
    for i in range(min(value.n_actions, FLOW_MAX_ACTIONS)):
        a = value.actions[i]
        t = a.type
        if t == ActionType.SET_ETH_SRC:
            out.append(SetEthSrc(bytes(a.mac)))
        elif t == ActionType.SET_ETH_DST:
            out.append(SetEthDst(bytes(a.mac)))
        elif t == ActionType.DEC_TTL:
            out.append(DecTtl(a.ttl_dec))
        elif t == ActionType.OUTPUT_LOCAL:
            out.append(OutputLocal(a.ifindex, bool(a.flags & ACT_F_PEER)))
        elif t == ActionType.OUTPUT_TUNNEL:
            out.append(OutputTunnel(a.vni, a.remote_ip, a.ifindex))
        elif t == ActionType.DROP:
            out.append(Drop())
        elif t == ActionType.TO_USERSPACE:
            out.append(ToUserspace())
        else:
            raise ValueError(f"unknown action type {t} in slot {i}")
    return tuple(out)
