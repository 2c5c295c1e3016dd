"""`bench/scale.py --quick` runs end to end (so the harness cannot rot): five real agents
against a ZooKeeper it starts, the bind and `--wait` samples all answered, the observed
agent measured at each step of the growing cloud."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.zookeeper, pytest.mark.slow]

TIMEOUT = 300  # about 30 s on a quiet machine; far more on a shared one


def test_the_quick_run_prints_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    # SIGTERM on timeout, not SIGKILL: the bench then stops its ZooKeeper and agents.
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--quick", "--samples", "3",
         "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"bench/scale.py --quick took more than {TIMEOUT}s: {stderr[-1500:]}")
    assert proc.returncode == 0, stderr[-2000:]
    rows = {r["metric"]: r for r in json.loads(out.read_text())["rows"]}
    owner = rows["bind -> owner ready p99"]
    assert owner["tessera"] is not None and owner["tessera"] > 0
    assert "3 samples" in rows["bind -> owner ready p50"]["note"]  # none timed out
    waited = rows["API rule --wait -> all concerned applied p99"]
    assert waited["tessera"] is not None and waited["tessera"] > 0
    assert waited["note"].startswith("0 answers before"), waited["note"]
    assert rows["--wait phase 'agents' p50"]["tessera"] > 0
    growth = [r for m, r in rows.items() if m.startswith("agent RSS at ")]
    assert len(growth) == 2 and all(r["tessera"] > 0 for r in growth)
    assert any(m.startswith("znodes at ") for m in rows)
    assert "bind -> owner ready p99" in stdout
