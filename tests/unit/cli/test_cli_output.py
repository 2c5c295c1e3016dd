"""The three output modes: human tables, the API's exact JSON, bare ids."""

from __future__ import annotations

import io
import json
import sys

import pytest
from cli_fake_api import FakeApi
from cli_harness import Run

from tessera.cli.ports import PORT_COLUMNS
from tessera.cli.rule_text import rule_action, rule_match
from tessera.clikit.output import Output

BRIDGE = "11111111-1111-4111-8111-111111111111"
CHAIN = "22222222-2222-4222-8222-222222222222"


def test_list_is_a_table_with_full_ids(api: FakeApi, run: Run) -> None:
    api.add("/bridges", id=BRIDGE, name="left", tenant_id="acme", admin_state_up=True)
    api.add("/bridges", name="right", tenant_id="acme", inbound_filter_id=CHAIN)
    out = run("bridge", "list")
    assert out.exit_code == 0
    lines = out.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "name",
        "tenant",
        "up",
        "inbound",
        "filter",
        "outbound",
        "filter",
    ]
    assert any(line.startswith(BRIDGE) and "left" in line for line in lines)
    assert any(CHAIN in line and "right" in line for line in lines)
    assert all(line == line.rstrip() for line in lines)


def test_ids_survive_a_narrow_terminal(
    api: FakeApi, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    api.add("/bridges", id=BRIDGE, name="a-rather-long-bridge-name-for-a-narrow-screen")
    api.add("/bridges", name="b", inbound_filter_id=CHAIN, outbound_filter_id=CHAIN)
    out = run("bridge", "list")
    assert BRIDGE in out.stdout
    assert CHAIN in out.stdout


def test_list_json_is_exactly_the_api_answer(api: FakeApi, run: Run) -> None:
    answer = [{"id": BRIDGE, "name": "x", "extra_field_from_a_newer_api": [1, 2]}]
    api.on("GET", "/bridges", 200, answer)
    for args in (("--json", "bridge", "list"), ("bridge", "list", "--json")):
        out = run(*args)
        assert out.exit_code == 0
        assert json.loads(out.stdout) == answer


def test_quiet_prints_ids_only(api: FakeApi, run: Run) -> None:
    first = api.add("/chains", name="a")
    second = api.add("/chains", name="b")
    assert run("chain", "list", "-q").stdout.split() == [first["id"], second["id"]]
    assert run("-q", "chain", "show", first["id"]).stdout == first["id"] + "\n"


def test_create_prints_the_object_json_or_id(api: FakeApi, run: Run) -> None:
    human = run("bridge", "create", "--name", "front")
    created = api.writes()[-1]
    assert human.exit_code == 0
    assert "front" in human.stdout and "name" in human.stdout

    as_json = json.loads(run("bridge", "create", "--name", "back", "--json").stdout)
    assert as_json["name"] == "back"
    assert api.objects[f"/bridges/{as_json['id']}"] == as_json

    quiet = run("bridge", "create", "--name", "mid", "-q").stdout.strip()
    assert api.objects[f"/bridges/{quiet}"]["name"] == "mid"
    assert created.body == {"name": "front"}


def test_show_is_key_value_with_readable_values(api: FakeApi, run: Run) -> None:
    rule = api.add(
        "/rules",
        type="dnat",
        tp_dst={"start": 80, "end": 80},
        in_ports=[],
        nat_targets=[{"address_from": "10.0.0.5", "address_to": "10.0.0.5"}],
        jump_chain_id=None,
        inv_nw_src=False,
    )
    out = run("rule", "show", rule["id"])
    values = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in out.stdout.splitlines()}
    assert values["tp_dst"] == "80"
    assert values["in_ports"] == "-"
    assert values["jump_chain_id"] == "-"
    assert values["inv_nw_src"] == "false"
    assert values["nat_targets"] == "address_from=10.0.0.5 address_to=10.0.0.5"


def test_empty_lists_say_so(run: Run) -> None:
    assert run("router", "list").stdout.strip() == "no routers"
    assert run("router", "list", "--json").stdout.strip() == "[]"
    assert run("router", "list", "-q").stdout == ""


def test_delete_says_what_it_did_and_json_stays_silent(api: FakeApi, run: Run) -> None:
    bridge = api.add("/bridges", name="gone")
    out = run("bridge", "delete", bridge["id"])
    assert out.stdout.strip() == f"deleted bridge {bridge['id']}"
    assert api.last().method == "DELETE" and f"/bridges/{bridge['id']}" not in api.objects
    other = api.add("/bridges", name="gone-too")
    assert run("bridge", "delete", other["id"], "--json").stdout == ""


def test_rule_list_summarises_match_and_action(api: FakeApi, run: Run) -> None:
    api.on(
        "GET",
        f"/chains/{CHAIN}/rules",
        200,
        [
            {
                "id": BRIDGE,
                "position": 1,
                "type": "drop",
                "nw_src_address": "10.0.0.0",
                "nw_src_length": 24,
                "inv_nw_src": True,
                "tp_dst": {"start": 80, "end": 90},
                "nw_proto": 6,
                "fragment_policy": "header",
            }
        ],
    )
    out = run("rule", "list", CHAIN)
    row = out.stdout.splitlines()[-1].split()
    assert row[:3] == ["1", BRIDGE, "drop"]
    assert row[3:] == ["nw_src!=10.0.0.0/24", "nw_proto=6", "tp_dst=80-90"]


def test_rule_text_for_every_kind_of_condition() -> None:
    row = {
        "in_ports": ["p1", "p2"],
        "inv_in_ports": True,
        "port_group": "g",
        "dl_type": 0x0806,
        "dl_src": "02:00:00:00:00:01",
        "dl_src_mask": "ff:ff:ff:00:00:00",
        "nw_dst_address": "10.0.0.1",
        "nw_dst_length": 32,
        "match_return_flow": True,
        "fragment_policy": "unfragmented",
        "ip_addr_group_src": "ipg",
    }
    assert rule_match(row) == (
        "in_ports!=p1,p2 port_group=g ip_addr_group_src=ipg dl_type=0x0806 "
        "dl_src=02:00:00:00:00:01/ff:ff:ff:00:00:00 nw_dst=10.0.0.1/32 return_flow "
        "fragments=unfragmented"
    )
    assert rule_match({"fragment_policy": "any"}) == "any"
    assert rule_action({"type": "jump", "jump_chain_id": "c"}) == "jump c"
    snat = {
        "type": "snat",
        "flow_action": "continue",
        "nat_targets": [
            {"address_from": "1.1.1.1", "address_to": "1.1.1.2", "port_from": 1, "port_to": 9}
        ],
    }
    assert rule_action(snat) == "snat 1.1.1.1-1.1.1.2:1-9 then continue"


def test_on_a_narrow_terminal_other_columns_give_way_to_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("COLUMNS", "70")
    monkeypatch.setenv("NO_COLOR", "1")
    rows = [
        {
            "id": BRIDGE,
            "type": "Router",
            "device_id": CHAIN,
            "port_address": "10.0.0.1",
            "network_length": 24,
            "peer_id": None,
        }
    ]
    Output(json_output=False, quiet=False).objects(rows, PORT_COLUMNS, empty="none")
    text = screen.getvalue()
    assert BRIDGE in text and CHAIN in text
