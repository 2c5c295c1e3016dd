"""`tessera mirror ...` and the mirror options of bridges, routers and ports."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cli_fake_api import FakeApi
from cli_harness import Run

B = "11111111-1111-4111-8111-111111111111"  # a bridge
P = "33333333-3333-4333-8333-333333333333"  # a port
Q = "44444444-4444-4444-8444-444444444444"  # another port
M = "55555555-5555-4555-8555-555555555555"  # a mirror
M2 = "66666666-6666-4666-8666-666666666666"  # another mirror


def _write(api: FakeApi, run: Run, *args: str) -> tuple[str, str, Any]:
    out = run(*args)
    assert out.exit_code == 0, out.stderr
    sent = api.writes()[-1]
    return sent.method, sent.path, sent.body


def test_create_takes_one_condition_from_the_rule_options(api: FakeApi, run: Run) -> None:
    args = ("mirror", "create", "--to-port", P, "--name", "tap", "--nw-proto", "tcp",
            "--tp-dst", "80", "--nw-src", "10.0.0.0/24", "--dl-type", "ipv4",
            "--in-ports", Q)  # fmt: skip
    assert _write(api, run, *args) == (
        "POST",
        "/mirrors",
        {
            "name": "tap",
            "to_port_id": P,
            "conditions": [
                {
                    "nw_proto": 6,
                    "tp_dst": {"start": 80, "end": 80},
                    "nw_src_address": "10.0.0.0",
                    "nw_src_length": 24,
                    "dl_type": 0x0800,
                    "in_ports": [Q],
                }
            ],
        },
    )


def test_create_without_conditions_mirrors_everything(api: FakeApi, run: Run) -> None:
    assert _write(api, run, "mirror", "create", "--to-port", P)[2] == {"to_port_id": P}


def test_conditions_json_gives_the_whole_list(api: FakeApi, run: Run) -> None:
    listed = [{"nw_proto": 17}, {"dl_type": 2054}]
    body = _write(api, run, "mirror", "create", "--to-port", P, "--conditions", json.dumps(listed))
    assert body[2] == {"to_port_id": P, "conditions": listed}


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("mirror", "create"), ("--to-port",)),
        (("mirror", "create", "--to-port", "nope"), ("--to-port",)),
        (("mirror", "create", "--to-port", P, "--conditions", "{"), ("--conditions", "JSON")),
        (("mirror", "create", "--to-port", P, "--conditions", "[1]"), ("array of objects",)),
        (("mirror", "create", "--to-port", P, "--conditions", "[]", "--nw-proto", "6"),
         ("without condition options",)),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(run: Run, args: tuple[str, ...], fragments: tuple[str]) -> None:
    run(*args).assert_one_line_error(*fragments)


def test_update_replaces_the_conditions(api: FakeApi, run: Run) -> None:
    api.add("/mirrors", id=M, name="", to_port_id=P, conditions=[{"nw_proto": 6}])
    _, path, body = _write(api, run, "mirror", "update", M, "--to-port", Q, "--nw-proto", "udp")
    assert path == f"/mirrors/{M}"
    assert body == {"id": M, "name": "", "to_port_id": Q, "conditions": [{"nw_proto": 17}]}
    _, _, body = _write(api, run, "mirror", "update", M, "--conditions", "[]")
    assert body["conditions"] == []


def test_list_show_delete(api: FakeApi, run: Run) -> None:
    api.add("/mirrors", id=M, name="tap", to_port_id=P, conditions=[{"nw_proto": 6}, {}])
    out = run("mirror", "list")
    assert out.exit_code == 0 and "nw_proto=6 | any" in out.stdout and "tap" in out.stdout
    assert json.loads(run("mirrors", "show", M, "--json").stdout)["to_port_id"] == P
    assert _write(api, run, "mirror", "delete", M)[:2] == ("DELETE", f"/mirrors/{M}")


def test_devices_and_ports_set_their_mirror_lists(api: FakeApi, run: Run) -> None:
    api.add("/bridges", id=B, name="b", inbound_mirror_ids=[], outbound_mirror_ids=[M])
    args = ("bridge", "update", B, "--inbound-mirror", f"{M},{M2}", "--outbound-mirror", "none")
    body = _write(api, run, *args)[2]
    assert (body["inbound_mirror_ids"], body["outbound_mirror_ids"]) == ([M, M2], [])
    api.add("/ports", id=P, type="Bridge", inbound_mirror_ids=[], outbound_mirror_ids=[])
    body = _write(api, run, "port", "update", P, "--outbound-mirror", M, "--outbound-mirror", M2)[2]
    assert body["outbound_mirror_ids"] == [M, M2] and body["inbound_mirror_ids"] == []
    body = _write(api, run, "router", "create", "--inbound-mirror", M)[2]
    assert body == {"inbound_mirror_ids": [M]}
    run("port", "update", P, "--inbound-mirror", "x").assert_one_line_error("--inbound-mirror")
