"""`tessera api serve --neutron-listen`: one process serves the v1 API and the Neutron
API on their own ports, over one NSDB, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx

from support.local import TESSERA, free_port
from support.wait import wait_until


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_api_serve_also_serves_neutron_on_its_own_port(tmp_path: Path) -> None:
    api, neutron = free_port(), free_port()
    log = (tmp_path / "serve.log").open("w")
    cmd = [TESSERA, "api", "serve", "--nsdb", "memory", "--listen", f"127.0.0.1:{api}",
           "--neutron-listen", f"127.0.0.1:{neutron}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{neutron}/"), timeout=30)
        versions = httpx.get(f"http://127.0.0.1:{neutron}/").json()["versions"]
        assert versions[0]["id"] == "v2.0"
        created = httpx.post(
            f"http://127.0.0.1:{neutron}/v2.0/networks", json={"network": {"name": "n1"}}
        )
        assert created.status_code == 201, created.text
        net = created.json()["network"]
        # The same NSDB: the network's twin bridge is in the v1 API of the same process.
        bridge = httpx.get(f"http://127.0.0.1:{api}/api/v1/bridges/{net['id']}")
        assert bridge.status_code == 200, bridge.text
        roles = httpx.get(f"http://127.0.0.1:{api}/api/v1/cluster/services").json()
        neutron_role = next(s for s in roles["services"] if s["name"] == "neutron")
        assert neutron_role["ready"] and neutron_role["role"] == "active"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        log.close()


def test_a_bad_neutron_address_is_one_line_and_no_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [TESSERA, "api", "serve", "--nsdb", "memory", "--neutron-listen", "nowhere"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--neutron-listen" in done.stderr and "Traceback" not in done.stderr, done.stderr
