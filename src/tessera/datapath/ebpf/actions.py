"""The datapath's actions (`tessera.datapath.base`) as ``struct flow_action`` slots.

There is one vocabulary of actions, the one every backend executes; this module only
lays it out for the kernel. Two things the kernel needs are not in an action:

- a local port is a device: `Output(port)` becomes OUTPUT_LOCAL with that port's
  ifindex, and ``ACT_F_PEER`` when it is the host end of a veth (`Device`);
- a flow holds at most FLOW_MAX_ACTIONS slots: a wider flood keeps the actions before
  its trailing outputs inline and moves the outputs into a flood set, which one FLOOD
  slot at the end of the flow names.

`encode` does both in one pass and returns bytes ready for the map (the miss path
installs every new flow through it, so no intermediate objects); `decode` is its
inverse, given the devices back as port numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

from tessera.datapath.base import (
    Action,
    CtCommit,
    DecTtl,
    Drop,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    SetIpDst,
    SetIpSrc,
    SetTpDst,
    SetTpSrc,
    ToUserspace,
)
from tessera.datapath.ebpf.layout import (
    ACT_F_CT_COMMIT,
    ACT_F_PEER,
    FLOOD_MAX_OUTPUTS,
    FLOW_ACTION_PACK,
    FLOW_MAX_ACTIONS,
    ActionType,
)

__all__ = [
    "SLOT_SIZE",
    "Device",
    "FlowTooLarge",
    "decode",
    "encode",
    "flood_slot",
    "is_output_slots",
    "outputs_to",
]

#: Where a local port number leads in the kernel: (ifindex, deliver into the veth's
#: peer namespace with bpf_redirect_peer).
Device: TypeAlias = tuple[int, bool]

SLOT_SIZE: Final = FLOW_ACTION_PACK.size

_NO_MAC: Final = bytes(6)
_SLOT = FLOW_ACTION_PACK.pack
_SET_ETH_SRC: Final = int(ActionType.SET_ETH_SRC)
_SET_ETH_DST: Final = int(ActionType.SET_ETH_DST)
_DEC_TTL: Final = int(ActionType.DEC_TTL)
_OUTPUT_LOCAL: Final = int(ActionType.OUTPUT_LOCAL)
_OUTPUT_TUNNEL: Final = int(ActionType.OUTPUT_TUNNEL)
_DROP: Final = int(ActionType.DROP)
_TO_USERSPACE: Final = int(ActionType.TO_USERSPACE)
_FLOOD: Final = int(ActionType.FLOOD)
_SET_IP_SRC: Final = int(ActionType.SET_IP_SRC)
_SET_IP_DST: Final = int(ActionType.SET_IP_DST)
_SET_TP_SRC: Final = int(ActionType.SET_TP_SRC)
_SET_TP_DST: Final = int(ActionType.SET_TP_DST)
_CT_COMMIT: Final = int(ActionType.CT_COMMIT)
_DROP_SLOT: Final = _SLOT(_DROP, 0, 0, 0, 0, 0, _NO_MAC, 0)
_TO_USERSPACE_SLOT: Final = _SLOT(_TO_USERSPACE, 0, 0, 0, 0, 0, _NO_MAC, 0)
_OUTPUT_TYPES: Final = (Output, OutputTunnel)


class FlowTooLarge(ValueError):
    """The actions fit neither a flow's action list nor one flood set."""


def encode(actions: Sequence[Action], devices: Mapping[int, Device]) -> tuple[bytes, bytes | None]:
    """(the slots the flow holds, the output slots of its flood set or None).

    The flow's slots exclude the FLOOD slot: the set's id is known only once the map
    holds the set (`FlowMap` appends `flood_slot`). Only the trailing run of outputs can
    go into a set: every output of a set gets the same packet, so an output followed by
    a rewrite stays inline where the rewrite can still follow it.

    Raises `FlowTooLarge` when neither fits, ValueError for an output to a port that
    `devices` lacks or a value out of its field's range.
    """
    n = len(actions)
    if n <= FLOW_MAX_ACTIONS:
        return _pack(actions, devices), None
    i = n
    while i > 0 and isinstance(actions[i - 1], _OUTPUT_TYPES):
        i -= 1
    if i + 1 > FLOW_MAX_ACTIONS:
        raise FlowTooLarge(
            f"{n} actions of which {i} before the trailing outputs; "
            f"the datapath takes at most {FLOW_MAX_ACTIONS - 1} there"
        )
    if n - i > FLOOD_MAX_OUTPUTS:
        raise FlowTooLarge(f"{n - i} outputs, a flood set holds at most {FLOOD_MAX_OUTPUTS}")
    return _pack(actions[:i], devices), _pack(actions[i:], devices)


def _pack(actions: Sequence[Action], devices: Mapping[int, Device]) -> bytes:
    slots: list[bytes] = []
    try:
        for a in actions:
            match a:
                case Output(port=port):
                    try:
                        ifindex, peer = devices[port]
                    except KeyError:
                        raise ValueError(
                            f"flow outputs to local port {port}, which is not attached"
                        ) from None
                    flags = ACT_F_PEER if peer else 0
                    slots.append(_SLOT(_OUTPUT_LOCAL, flags, 0, ifindex, 0, 0, _NO_MAC, 0))
                case OutputTunnel(vni=vni, remote_ip=ip, commit=commit):
                    flags = ACT_F_CT_COMMIT if commit else 0
                    slots.append(_SLOT(_OUTPUT_TUNNEL, flags, 0, 0, vni, ip, _NO_MAC, 0))
                case SetEthSrc(mac=mac):
                    slots.append(_SLOT(_SET_ETH_SRC, 0, 0, 0, 0, 0, mac.to_bytes(6, "big"), 0))
                case SetEthDst(mac=mac):
                    slots.append(_SLOT(_SET_ETH_DST, 0, 0, 0, 0, 0, mac.to_bytes(6, "big"), 0))
                case DecTtl(n=n):
                    slots.append(_SLOT(_DEC_TTL, 0, n, 0, 0, 0, _NO_MAC, 0))
                case SetIpSrc(addr=addr):
                    slots.append(_SLOT(_SET_IP_SRC, 0, 0, 0, 0, addr, _NO_MAC, 0))
                case SetIpDst(addr=addr):
                    slots.append(_SLOT(_SET_IP_DST, 0, 0, 0, 0, addr, _NO_MAC, 0))
                case SetTpSrc(port=tp):
                    slots.append(_SLOT(_SET_TP_SRC, 0, 0, 0, 0, 0, _NO_MAC, tp))
                case SetTpDst(port=tp):
                    slots.append(_SLOT(_SET_TP_DST, 0, 0, 0, 0, 0, _NO_MAC, tp))
                case Drop():
                    slots.append(_DROP_SLOT)
                case ToUserspace():
                    slots.append(_TO_USERSPACE_SLOT)
                case CtCommit(zone=zone):
                    slots.append(_SLOT(_CT_COMMIT, 0, 0, zone, 0, 0, _NO_MAC, 0))
                case _:
                    raise TypeError(f"not a datapath action: {a!r}")
    except (struct.error, OverflowError) as exc:  # a field out of its C type's range
        raise ValueError(f"actions {list(actions)!r} do not fit flow_action: {exc}") from None
    return b"".join(slots)


def flood_slot(set_id: int) -> bytes:
    """The slot that emits every output of flood set ``set_id``."""
    return _SLOT(_FLOOD, 0, 0, set_id, 0, 0, _NO_MAC, 0)


def flood_id(slot: bytes) -> int | None:
    """The set a slot floods to, None if it is not a FLOOD."""
    if slot[0] != _FLOOD:
        return None
    return int(FLOW_ACTION_PACK.unpack(slot)[3])


def outputs_to(slots: bytes, ifindex: int) -> bool:
    """Whether a slot is an OUTPUT_LOCAL to device `ifindex`."""
    return any(
        typ == _OUTPUT_LOCAL and ifx == ifindex
        for typ, _f, _t, ifx, *_ in FLOW_ACTION_PACK.iter_unpack(slots)
    )


def is_output_slots(slots: bytes) -> bool:
    """Whether every slot is an output (what a flood set may hold)."""
    return all(slots[i] in (_OUTPUT_LOCAL, _OUTPUT_TUNNEL) for i in range(0, len(slots), SLOT_SIZE))


def decode(slots: bytes, ports: Mapping[int, int]) -> tuple[Action, ...] | None:
    """The actions the slots hold, `ports` giving the local port of each ifindex.

    None when the slots are unusable as actions: an output to a device that is no
    longer a port, a FLOOD whose set is gone, a tunnel through a device of its own
    (never written by `encode`), a value no action takes. The agent replaces or removes
    such a flow.
    """
    out: list[Action] = []
    try:
        for typ, flags, ttl_dec, ifindex, vni, ip, mac, tp in FLOW_ACTION_PACK.iter_unpack(slots):
            if typ == _OUTPUT_LOCAL:
                port = ports.get(ifindex)
                if port is None:
                    return None
                out.append(Output(port))
            elif typ == _OUTPUT_TUNNEL:
                if ifindex:
                    return None
                out.append(OutputTunnel(vni, ip, bool(flags & ACT_F_CT_COMMIT)))
            elif typ == _SET_ETH_SRC:
                out.append(SetEthSrc(int.from_bytes(mac, "big")))
            elif typ == _SET_ETH_DST:
                out.append(SetEthDst(int.from_bytes(mac, "big")))
            elif typ == _DEC_TTL:
                out.append(DecTtl(ttl_dec))
            elif typ == _SET_IP_SRC:
                out.append(SetIpSrc(ip))
            elif typ == _SET_IP_DST:
                out.append(SetIpDst(ip))
            elif typ == _SET_TP_SRC:
                out.append(SetTpSrc(tp))
            elif typ == _SET_TP_DST:
                out.append(SetTpDst(tp))
            elif typ == _DROP:
                out.append(Drop())
            elif typ == _TO_USERSPACE:
                out.append(ToUserspace())
            elif typ == _CT_COMMIT:
                out.append(CtCommit(ifindex))
            else:  # FLOOD left unresolved, NONE, or unknown
                return None
    except ValueError:  # a value the action refuses (a TTL decrement of 0, VNI 0 ...)
        return None
    return tuple(out)
