#!/usr/bin/env bash
# The README demo: a two-host lab, two bridges joined by a router, one VM on each host,
# and a ping from one to the other across hosts (VXLAN between the host namespaces).
#
#   10.0.1.0/24 bridge A -- router (10.0.1.1 | 10.0.2.1) -- bridge B 10.0.2.0/24
#        vm1 10.0.1.10 on h1                                  vm2 10.0.2.10 on h2
#
# Needs root and an installed tessera (scripts/install.sh). Leaves the lab running:
# explore it with `tessera lab status`, `tessera lab exec vm1 -- ...`, `tessera flows`,
# and remove it with `tessera lab down --name "$LAB"`.
# Environment: TESSERA_LAB (lab name, default "default"), TESSERA_DATAPATH (ebpf or
# userspace, default ebpf).
set -euo pipefail

LAB=${TESSERA_LAB:-default}
DATAPATH=${TESSERA_DATAPATH:-ebpf}
export TESSERA_LAB=$LAB

step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# new VAR CMD...: run CMD (which prints an id, -q), keep the id in $VAR and show both.
new() {
  local var=$1 id
  shift
  printf '$ %s\n' "$*"
  id=$("$@")
  printf -v "$var" '%s' "$id"
  printf '  %s=%s\n' "$var" "$id"
}

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root (the lab makes network namespaces)" >&2
  exit 1
fi
command -v tessera >/dev/null || { echo "demo.sh: tessera is not installed (scripts/install.sh)" >&2; exit 1; }

step "a lab of two hosts, each with its agent ($DATAPATH datapath)"
out=$(tessera lab up --hosts 2 --name "$LAB" --datapath "$DATAPATH")
printf '%s\n' "$out"
export "$(printf '%s\n' "$out" | tail -n 1)"   # TESSERA_API=http://...

# The demo's devices have fixed ids, so that running it again replaces its own topology
# (deleting a device deletes its ports, routes and bindings) instead of adding another.
BA=de000000-0000-4000-8000-0000000000a1
BB=de000000-0000-4000-8000-0000000000b1
R=de000000-0000-4000-8000-0000000000c1
for vm in vm1 vm2; do tessera lab vm del "$vm" >/dev/null 2>&1 || true; done
tessera router delete "$R" >/dev/null 2>&1 || true
for b in "$BA" "$BB"; do tessera bridge delete "$b" >/dev/null 2>&1 || true; done

step "bridge A (10.0.1.0/24) and bridge B (10.0.2.0/24)"
run tessera bridge create --id "$BA" --name demo-a -q
run tessera bridge create --id "$BB" --name demo-b -q

step "a router with a port on each bridge"
run tessera router create --id "$R" --name demo-r -q
new RA tessera router port create "$R" --address 10.0.1.1/24 -q
new RB tessera router port create "$R" --address 10.0.2.1/24 -q
run tessera route create "$R" --dst 10.0.1.0/24 --next-hop-port "$RA" -q
run tessera route create "$R" --dst 10.0.2.0/24 --next-hop-port "$RB" -q
new BAR tessera bridge port create "$BA" -q
new BBR tessera bridge port create "$BB" -q
run tessera link "$BAR" "$RA"
run tessera link "$BBR" "$RB"

step "VM ports, and the VMs: vm1 on h1 (bridge A), vm2 on h2 (bridge B)"
new P1 tessera bridge port create "$BA" -q
new P2 tessera bridge port create "$BB" -q
run tessera lab vm add vm1 --host h1 --port "$P1" --ip 10.0.1.10/24 --gw 10.0.1.1
run tessera lab vm add vm2 --host h2 --port "$P2" --ip 10.0.2.10/24 --gw 10.0.2.1

step "vm1 pings vm2, across hosts and through the router"
if run tessera lab exec vm1 -- ping -c 3 -W 2 10.0.2.10; then
  step "it works. Try:"
  echo "  export TESSERA_API=$TESSERA_API"
  echo "  tessera lab status"
  echo "  tessera lab exec vm2 -- ping -c 2 10.0.1.10"
  echo "  tessera flows --host h1"
  echo "  tessera lab down --name $LAB     # removes everything the lab made"
else
  echo >&2
  tessera lab status >&2 || true
  echo "demo.sh: the ping from vm1 to vm2 failed; the agents' logs are in the lab's state" \
    "directory above. The lab stays up for a look; tessera lab down --name $LAB removes it" >&2
  exit 1
fi
