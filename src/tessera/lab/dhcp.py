"""DHCP inside a lab VM: busybox `udhcpc` with the lab's own hook script.

Why not Debian's /etc/udhcpc/default.script: it ignores classless static routes (option
121), and it writes /etc/resolv.conf — a VM namespace shares the machine's filesystem,
so that would rewrite the machine's own resolver. The lab's script configures the
address, the MTU (option 26), the classless routes or else the default gateway (RFC 3442:
a client that gets option 121 ignores the router option) and touches nothing outside the
VM's namespace. Routes it adds are `proto dhcp`, so a renewal replaces exactly them.

The client runs in the foreground, bounded (`-t` discovers `-T` seconds apart, `-n`:
give up without a lease), and exits once it has one (`-q`): the lab's leases are long
and its VMs short-lived, so nothing renews.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tessera.lab import netns
from tessera.lab.errors import LabError

DISCOVERS = 6
DISCOVER_INTERVAL = 2  # seconds
SCRIPT_NAME = "udhcpc.sh"

SCRIPT = r"""#!/bin/sh
# tessera lab: applies a DHCP lease to a VM's interface (udhcpc -s). Written by `tessera
# lab`; see tessera/lab/dhcp.py for why Debian's default.script is not used.
# udhcpc passes: $1 = deconfig|bound|renew|leasefail|nak, and $interface $ip $mask
# $router $mtu $staticroutes ("NET/LEN GW NET/LEN GW ...") in the environment.
set -u
action="$1"
dev="$interface"
case "$action" in
deconfig)
    ip link set dev "$dev" up
    ip -4 addr flush dev "$dev"
    ;;
bound|renew)
    if [ -n "${mtu:-}" ]; then
        ip link set dev "$dev" mtu "$mtu" || echo "udhcpc.sh: cannot set MTU $mtu" >&2
    fi
    # An address of another lease goes; the same address stays (no blip on renew).
    for old in $(ip -4 -o addr show dev "$dev" | awk '{print $4}'); do
        [ "$old" = "$ip/$mask" ] || ip -4 addr del "$old" dev "$dev"
    done
    ip -4 addr replace "$ip/$mask" dev "$dev"
    ip -4 route flush dev "$dev" proto dhcp
    onlink=""
    [ "$mask" = "32" ] && onlink="onlink"
    if [ -n "${staticroutes:-}" ]; then
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            if [ "$2" = "0.0.0.0" ]; then
                ip -4 route replace "$1" dev "$dev" proto dhcp scope link
            else
                ip -4 route replace "$1" via "$2" dev "$dev" proto dhcp $onlink
            fi
            shift 2
        done
    elif [ -n "${router:-}" ]; then
        set -- $router
        ip -4 route replace default via "$1" dev "$dev" proto dhcp $onlink
    fi
    echo "udhcpc.sh: $action $ip/$mask mtu=${mtu:-} router=${router:-} routes=${staticroutes:-}"
    ;;
leasefail|nak)
    echo "udhcpc.sh: $action ${message:-}" >&2
    ;;
esac
exit 0
"""


def write_script(directory: Path) -> Path:
    path = directory / SCRIPT_NAME
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != SCRIPT:
        tmp = path.with_name(f".{SCRIPT_NAME}.tmp")
        tmp.write_text(SCRIPT)
        tmp.chmod(0o755)
        tmp.replace(path)
    return path


def run_client(namespace: str, ifname: str, script: Path, vm: str) -> str:
    """Get a lease for `ifname` in `namespace` and apply it; returns the client's
    summary line. Bounded: about DISCOVERS x DISCOVER_INTERVAL seconds."""
    if shutil.which("udhcpc") is None:
        raise LabError("--dhcp needs udhcpc (apt install udhcpc)")
    argv = [
        *netns.nsenter(namespace),
        "udhcpc", "-f", "-q", "-n",
        "-i", ifname,
        "-t", str(DISCOVERS), "-T", str(DISCOVER_INTERVAL), "-A", "1",
        "-s", str(script),
        "-O", "mtu", "-O", "staticroutes",
        "-x", f"hostname:{vm}",
    ]  # fmt: skip
    bound = DISCOVERS * DISCOVER_INTERVAL + 10
    proc = netns.run(argv, check=False, timeout=bound)
    output = (proc.stdout + proc.stderr).strip().splitlines()
    summary = [ln for ln in output if ln.startswith("udhcpc.sh: bound")]
    if proc.returncode != 0 or not summary:
        last = output[-1] if output else f"exit status {proc.returncode}"
        raise LabError(
            f"VM {vm} got no DHCP lease within {DISCOVERS * DISCOVER_INTERVAL}s ({last}); "
            f"the VM stays in place: `tessera lab vm del {vm}` removes it"
        )
    return summary[-1].removeprefix("udhcpc.sh: ")
