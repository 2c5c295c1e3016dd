"""Flow actions as values, and their encoding into ``struct flow_value``.

The agent builds these from a simulation result; they are frozen and
hashable so desired-flow tables can compare them cheaply with what the
kernel holds (:func:`decode_actions` is the exact inverse of
:func:`encode_actions`).
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from tessera.datapath.ebpf.layout import (
    ACT_F_PEER,
    FLOOD_MAX_OUTPUTS,
    FLOW_ACTION_PACK,
    FLOW_MAX_ACTIONS,
    ActionType,
    FloodSet,
    FlowAction,
    FlowValue,
    format_mac,
    parse_mac,
)

__all__ = [
    "Action",
    "DecTtl",
    "Drop",
    "Flood",
    "Output",
    "OutputLocal",
    "OutputTunnel",
    "SetEthDst",
    "SetEthSrc",
    "ToUserspace",
    "decode_actions",
    "decode_flood_set",
    "encode_actions",
    "encode_flood_set",
    "pack_action",
    "pack_actions",
    "split_flood",
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


@dataclass(frozen=True, slots=True)
class Flood:
    """Emit every output of flood set ``set_id`` (the ``flood_sets`` map).

    Only :class:`~tessera.datapath.ebpf.maps.FlowMap` writes it, for a flow
    whose outputs do not fit the action list; readers of a flow see the
    outputs of the set, never this action.
    """

    set_id: int


Action: TypeAlias = (
    SetEthSrc | SetEthDst | DecTtl | OutputLocal | OutputTunnel | Drop | ToUserspace | Flood
)
Output: TypeAlias = OutputLocal | OutputTunnel


_NO_MAC = bytes(6)
_SLOT = FLOW_ACTION_PACK.pack
_SET_ETH_SRC = int(ActionType.SET_ETH_SRC)
_SET_ETH_DST = int(ActionType.SET_ETH_DST)
_DEC_TTL = int(ActionType.DEC_TTL)
_OUTPUT_LOCAL = int(ActionType.OUTPUT_LOCAL)
_OUTPUT_TUNNEL = int(ActionType.OUTPUT_TUNNEL)
_DROP = _SLOT(int(ActionType.DROP), 0, 0, 0, 0, 0, _NO_MAC)
_TO_USERSPACE = _SLOT(int(ActionType.TO_USERSPACE), 0, 0, 0, 0, 0, _NO_MAC)
_FLOOD = int(ActionType.FLOOD)
_EMPTY_SLOT = bytes(FLOW_ACTION_PACK.size)


def pack_action(act: Action) -> bytes:
    """One ``struct flow_action``, as bytes (type, flags, ttl_dec, ifindex, vni,
    remote_ip, mac)."""
    match act:
        case OutputLocal(ifindex=ifindex, peer=peer):
            return _SLOT(_OUTPUT_LOCAL, ACT_F_PEER if peer else 0, 0, ifindex, 0, 0, _NO_MAC)
        case OutputTunnel():
            return _SLOT(_OUTPUT_TUNNEL, 0, 0, act.ifindex, act.vni, act.remote_ip, _NO_MAC)
        case SetEthSrc(mac=mac):
            return _SLOT(_SET_ETH_SRC, 0, 0, 0, 0, 0, mac)
        case SetEthDst(mac=mac):
            return _SLOT(_SET_ETH_DST, 0, 0, 0, 0, 0, mac)
        case DecTtl(n=n):
            return _SLOT(_DEC_TTL, 0, n, 0, 0, 0, _NO_MAC)
        case Drop():
            return _DROP
        case ToUserspace():
            return _TO_USERSPACE
        case Flood(set_id=set_id):
            return _SLOT(_FLOOD, 0, 0, set_id, 0, 0, _NO_MAC)
        case _:
            raise TypeError(f"not a datapath action: {act!r}")


def pack_actions(actions: Sequence[Action]) -> bytes:
    """``flow_value.actions``: every slot, the unused ones zero."""
    if len(actions) > FLOW_MAX_ACTIONS:
        raise ValueError(f"{len(actions)} actions, the datapath takes at most {FLOW_MAX_ACTIONS}")
    return _pack_slots(actions) + _EMPTY_SLOT * (FLOW_MAX_ACTIONS - len(actions))


def _pack_slots(actions: Sequence[Action]) -> bytes:
    try:
        return b"".join([pack_action(a) for a in actions])
    except struct.error as exc:  # a field out of its C type's range
        raise ValueError(f"actions {actions!r} do not fit struct flow_action: {exc}") from None


def _write_slots(array: ctypes.Array[FlowAction], packed: bytes) -> None:
    ctypes.memmove(ctypes.addressof(array), packed, len(packed))


def _decode_one(a: FlowAction, where: str) -> Action:
    t = a.type
    if t == ActionType.SET_ETH_SRC:
        return SetEthSrc(bytes(a.mac))
    if t == ActionType.SET_ETH_DST:
        return SetEthDst(bytes(a.mac))
    if t == ActionType.DEC_TTL:
        return DecTtl(a.ttl_dec)
    if t == ActionType.OUTPUT_LOCAL:
        return OutputLocal(a.ifindex, bool(a.flags & ACT_F_PEER))
    if t == ActionType.OUTPUT_TUNNEL:
        return OutputTunnel(a.vni, a.remote_ip, a.ifindex)
    if t == ActionType.DROP:
        return Drop()
    if t == ActionType.TO_USERSPACE:
        return ToUserspace()
    if t == ActionType.FLOOD:
        return Flood(int(a.ifindex))
    raise ValueError(f"unknown action type {t} in {where}")


def encode_actions(actions: Sequence[Action], value: FlowValue) -> None:
    """Write ``actions`` into ``value.actions``/``n_actions`` (counters untouched)."""
    if len(actions) > FLOW_MAX_ACTIONS:
        raise ValueError(f"{len(actions)} actions, the datapath takes at most {FLOW_MAX_ACTIONS}")
    packed = pack_actions(actions)
    value.n_actions = len(actions)
    _write_slots(value.actions, packed)


def decode_actions(value: FlowValue) -> tuple[Action, ...]:
    """The inverse of :func:`encode_actions`."""
    return tuple(
        _decode_one(value.actions[i], f"slot {i}")
        for i in range(min(value.n_actions, FLOW_MAX_ACTIONS))
    )


def split_flood(actions: Sequence[Action]) -> tuple[tuple[Action, ...], tuple[Output, ...]]:
    """(everything before the trailing outputs, the trailing outputs).

    Only the trailing run of outputs can go into a flood set: every output
    of a set gets the same packet, so an output followed by a rewrite must
    stay inline where the rewrite can still follow it.
    """
    i = len(actions)
    while i > 0 and isinstance(actions[i - 1], OutputLocal | OutputTunnel):
        i -= 1
    outputs = tuple(a for a in actions[i:] if isinstance(a, OutputLocal | OutputTunnel))
    return tuple(actions[:i]), outputs


def encode_flood_set(outputs: Sequence[Output], value: FloodSet) -> None:
    """Write ``outputs`` into a flood set (OUTPUT_LOCAL/OUTPUT_TUNNEL only)."""
    if len(outputs) > FLOOD_MAX_OUTPUTS:
        raise ValueError(f"{len(outputs)} outputs, a flood set holds at most {FLOOD_MAX_OUTPUTS}")
    for out in outputs:
        if not isinstance(out, OutputLocal | OutputTunnel):
            raise TypeError(f"a flood set holds outputs only, not {out!r}")
    slots = _pack_slots(outputs)
    value.n_outputs = len(outputs)
    _write_slots(value.outputs, slots)


def decode_flood_set(value: FloodSet) -> tuple[Output, ...]:
    """The inverse of :func:`encode_flood_set`."""
    out: list[Output] = []
    for i in range(min(value.n_outputs, FLOOD_MAX_OUTPUTS)):
        act = _decode_one(value.outputs[i], f"flood set output {i}")
        if not isinstance(act, OutputLocal | OutputTunnel):
            raise ValueError(f"flood set output {i} is not an output: {act!r}")
        out.append(act)
    return tuple(out)
