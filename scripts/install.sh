#!/usr/bin/env bash
# Installs everything tessera needs on a Debian 12 machine, as root: the Debian packages
# (ZooKeeper, the eBPF toolchain, iproute2, traffic tools, Java 17 and Maven), Apache
# Cassandra's jars (via Maven) and the Python package with
# its pinned dependencies in a virtualenv (.venv beside this checkout, or $TESSERA_VENV).
# The `tessera` command is linked into /usr/local/bin. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
venv=${TESSERA_VENV:-$here/.venv}

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it installs Debian packages and needs namespaces/eBPF)" >&2
  exit 1
fi

debs=(
  python3 python3-venv python3-pip
  zookeeper default-jre-headless
  openjdk-17-jre-headless maven
  iproute2 clang llvm libbpf-dev bpftool
  iperf3 tcpdump netcat-openbsd ethtool udhcpc iputils-ping procps psmisc util-linux kmod
)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating virtualenv $venv"
  python3 -m venv "$venv"
fi
echo "== installing tessera and its pinned dependencies into $venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$venv/bin/python" -m pip install -q -c constraints.txt -e ".[test]" 2>&1 \
  | grep -v -e "^WARNING: Location" -e "is ignored: it is neither" || true
"$venv/bin/python" -c "import tessera" # fail loudly if the install did not work
ln -sf "$venv/bin/tessera" /usr/local/bin/tessera

# Apache Cassandra's server jars (started only when asked: `lab up --cassandra N`, the
# Cassandra tests, `--flow-state cassandra`), fetched by Maven from the pom in cassandra/;
# skipped when this version is already there. Keep in step with tessera.cassandra.install.
cassandra_version=$(sed -n 's:.*<version>\(5\.[0-9.]*\)</version>.*:\1:p' cassandra/pom.xml)
cassandra_home=${TESSERA_CASSANDRA_HOME:-/opt/tessera/cassandra/$cassandra_version}
if [ ! -f "$cassandra_home/lib/cassandra-all-$cassandra_version.jar" ]; then
  echo "== fetching Cassandra $cassandra_version into $cassandra_home"
  mkdir -p "$cassandra_home"
  rm -rf "$cassandra_home/lib.partial"
  mvn -q -B -f cassandra/pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$cassandra_home/lib.partial" -DincludeScope=runtime
  rm -rf "$cassandra_home/lib"
  mv "$cassandra_home/lib.partial" "$cassandra_home/lib"
fi

# bpffs for pinned eBPF maps (normally mounted by systemd; containers may lack it)
if ! mount | grep -q " /sys/fs/bpf type bpf"; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || echo "note: could not mount bpffs at /sys/fs/bpf"
fi
echo "== tessera installed: $(command -v tessera)"
