"""Every way a command can fail ends in one line on stderr and a non-zero status."""

from __future__ import annotations

import httpx
import pytest
from cli_fake_api import FakeApi
from cli_harness import API_URL, Run

from tessera.clikit.session import Session

BRIDGE = "11111111-1111-4111-8111-111111111111"
CHAIN = "22222222-2222-4222-8222-222222222222"


def _failing(exc: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handler)


def test_connection_refused(run: Run) -> None:
    session = Session(
        api_url=API_URL, transport=_failing(httpx.ConnectError("[Errno 111] Connection refused"))
    )
    out = run("bridge", "list", session=session)
    out.assert_one_line_error(
        f"cannot reach the tessera API at {API_URL}", "Connection refused", code=3
    )


def test_real_refused_port_without_a_mock(run: Run, unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}/api/v1"
    out = run("--api", url, "router", "list", session=Session())
    out.assert_one_line_error(f"cannot reach the tessera API at {url}", code=3)


def test_timeout(run: Run) -> None:
    session = Session(api_url=API_URL, transport=_failing(httpx.ReadTimeout("read timed out")))
    out = run("chain", "list", session=session)
    out.assert_one_line_error("cannot reach the tessera API", "timed out", code=3)


def test_404_prints_the_api_message(api: FakeApi, run: Run) -> None:
    api.on("GET", f"/bridges/{BRIDGE}", 404, {"message": f"bridge {BRIDGE} not found"})
    run("bridge", "show", BRIDGE).assert_one_line_error(
        f"bridge {BRIDGE} not found", "HTTP 404", code=1
    )


def test_400_message_of_several_lines_stays_one_line(api: FakeApi, run: Run) -> None:
    api.on("POST", "/chains", 400, {"message": "inbound chain\n  does not exist"})
    run("chain", "create", "--name", "x").assert_one_line_error(
        "inbound chain does not exist (HTTP 400)", code=1
    )


def test_422_detail_list_is_summarised(api: FakeApi, run: Run) -> None:
    detail = [{"loc": ["body", "name"], "msg": "String should have at most 255 characters"}]
    api.on("POST", "/bridges", 422, {"detail": detail})
    run("bridge", "create", "--name", "n").assert_one_line_error(
        "name: String should have at most 255 characters", "HTTP 422"
    )


def test_500_html_body_falls_back_to_the_reason(api: FakeApi, run: Run) -> None:
    api.overrides[("GET", "/routers")] = lambda r: httpx.Response(
        500, content=b"<html><body>oops\n</body></html>"
    )
    run("router", "list").assert_one_line_error("Internal Server Error (HTTP 500)")


def test_an_answer_that_is_not_json(api: FakeApi, run: Run) -> None:
    api.overrides[("GET", "/hosts")] = lambda r: httpx.Response(200, content=b"<html>hi</html>")
    run("host", "list").assert_one_line_error("other than JSON", "is it a tessera API?")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["rule", "create", CHAIN, "--type", "drop", "--nw-src", "10.0.0.0/40"],
         ["--nw-src", "prefix length 40"]),
        (["rule", "create", CHAIN, "--type", "drop", "--tp-dst", "90:80"],
         ["--tp-dst", "starts after it ends"]),
        (["rule", "create", CHAIN, "--type", "drop", "--tp-src", "ssh"],
         ["--tp-src", "not a port"]),
        (["rule", "create", CHAIN, "--type", "drop", "--dl-src", "02:00:00:00:00"],
         ["--dl-src", "not a MAC address"]),
        (["rule", "create", CHAIN, "--type", "dance"], ["--type", "'dance' is not one of"]),
        (["rule", "create", CHAIN], ["needs --type"]),
        (["rule", "create", CHAIN, "--type", "jump"], ["needs --jump-chain-id"]),
        (["rule", "create", CHAIN, "--type", "snat"], ["needs --nat-target"]),
        (["rule", "create", CHAIN, "--type", "dnat", "--nat-target", "10.0.0.9-10.0.0.1"],
         ["--nat-target", "starts after it ends"]),
        (["router", "port", "create", BRIDGE, "--address", "10.0.0.1"],
         ["--address", "prefix length"]),
        (["router", "port", "create", BRIDGE], ["needs --address"]),
        (["router", "port", "create", BRIDGE, "--address", "10.0.0.1/24", "--mac", "zz"],
         ["--mac", "not a MAC"]),
        (["bridge", "port", "create", BRIDGE, "--vlan-id", "4096"], ["--vlan-id", "0..4095"]),
        (["bridge", "show", "not-a-uuid"], ["ID", "not an id"]),
        (["route", "create", BRIDGE, "--dst", "10.0.0.0/24"], ["needs --next-hop-port"]),
        (["route", "create", BRIDGE], ["needs --dst"]),
        (["route", "create", BRIDGE, "--dst", "0/0", "--type", "BlackHole"], ["--dst"]),
        (["dhcp", "subnet", "create", BRIDGE, "10.0.0.1/24"], ["SUBNET", "host bits"]),
        (["dhcp", "subnet", "create", BRIDGE, "10.0.0.0/24", "--opt121-route", "1.0.0.0/8"],
         ["--opt121-route", "DEST/LEN,GATEWAY"]),
        (["ip-addr-group", "add-addr", BRIDGE, "10.0.0.256"], ["ADDR", "not an IPv4 address"]),
        (["tunnel-zone", "add-host", BRIDGE, CHAIN, "--ip", "nope"], ["--ip"]),
        (["bind", BRIDGE, "eth0/1", "--host", CHAIN], ["IFNAME", "not an interface name"]),
        (["api", "serve", "--listen", "8181"], ["--listen", "ADDR:PORT"]),
        (["api", "serve", "--nsdb", "mysql://db"], ["--nsdb", "not an NSDB URL"]),
        (["bridge", "update", BRIDGE], ["nothing to change"]),
        (["--api", "ftp://x/api/v1", "bridge", "list"], ["invalid API URL 'ftp://x/api/v1'"]),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_before_any_request(
    api: FakeApi, run: Run, args: list[str], fragments: list[str]
) -> None:
    out = run(*args)
    out.assert_one_line_error(*fragments, code=2)
    assert api.writes() == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["bridge", "create", "--nme", "x"], "No such option: --nme"),
        (["bridge", "lst"], "No such command 'lst'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["rule", "list"], "Missing argument"),
        (["port", "link", BRIDGE], "Missing argument"),
        (["bridge", "list", "extra"], "unexpected extra argument"),
        (["tunnel-zone", "add-host", BRIDGE, CHAIN], "Missing option '--ip'"),
    ],
)
def test_typer_usage_errors_are_one_line_too(run: Run, args: list[str], fragment: str) -> None:
    out = run(*args)
    out.assert_one_line_error(fragment, "--help'", code=2)


@pytest.mark.parametrize("group", [["rule"], ["bridges"], ["bridge", "port"]])
def test_a_bare_group_shows_its_help_once(run: Run, group: list[str]) -> None:
    out = run(*group)
    assert out.exit_code == 2
    assert "create" in out.stdout and "list" in out.stdout
    assert (out.stdout + out.stderr).count("Usage:") == 1, out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_update_retries_on_conflict_then_gives_up(api: FakeApi, run: Run) -> None:
    api.add("/bridges", id=BRIDGE, name="old")
    answers = iter([409, 200])

    def put(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == 409:
            return httpx.Response(409, json={"message": "version conflict"})
        return httpx.Response(200, content=request.content)

    api.overrides[("PUT", f"/bridges/{BRIDGE}")] = put
    out = run("bridge", "update", BRIDGE, "--name", "new")
    assert out.exit_code == 0, out.stderr
    assert [s.method for s in api.sent] == ["GET", "PUT", "GET", "PUT"]

    api.on("PUT", f"/bridges/{BRIDGE}", 409, {"message": "version conflict"})
    run("bridge", "update", BRIDGE, "--name", "newer").assert_one_line_error(
        "version conflict (HTTP 409)", code=1
    )


def test_unexpected_exceptions_are_one_line_unless_debugging(
    api: FakeApi, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("disk on fire")

    api.overrides[("GET", "/chains")] = boom
    run("chain", "list").assert_one_line_error(
        "internal error: RuntimeError: disk on fire", "TESSERA_DEBUG=1", code=1
    )
    monkeypatch.setenv("TESSERA_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        run("chain", "list")
