#!/usr/bin/env bash
# The whole test suite: lint, types, then every test (unit, integration with a real
# ZooKeeper, system tests with real namespaces, eBPF and agents). Needs root.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TESSERA_VENV:-$(pwd)/.venv}
echo "== ruff"
"$venv/bin/ruff" check src tests bench
echo "== mypy"
"$venv/bin/mypy"
echo "== pytest"
exec "$venv/bin/pytest" -p no:cacheprovider "$@"
