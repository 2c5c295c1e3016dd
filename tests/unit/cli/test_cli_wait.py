"""`--wait` on the CLI's writes: the write asks the API to wait (`wait=true` and the
timeout), reads never do, and a timeout is the API's one-line error."""

from __future__ import annotations

import httpx
from cli_fake_api import FakeApi
from cli_harness import API_URL, Run

from tessera.clikit.session import Session

B = "11111111-1111-4111-8111-111111111111"


def _recording(api: FakeApi, seen: list[httpx.Request]) -> Session:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return api.handle(request)

    return Session(api_url=API_URL, transport=httpx.MockTransport(handle))


def test_writes_ask_to_wait_and_reads_do_not(api: FakeApi, run: Run) -> None:
    seen: list[httpx.Request] = []
    api.add("/bridges", id=B, name="lan")
    out = run("bridge", "update", B, "--name", "lan2", "--wait", "--wait-timeout", "5",
              session=_recording(api, seen))  # fmt: skip
    assert out.exit_code == 0, out.stderr
    writes = [r for r in seen if r.method != "GET"]
    assert [r.method for r in writes] == ["PUT"]
    assert dict(writes[0].url.params) == {"wait": "true", "wait_timeout": "5"}
    assert all(not r.url.params for r in seen if r.method == "GET")


def test_the_default_timeout_and_no_wait_without_the_flag(api: FakeApi, run: Run) -> None:
    seen: list[httpx.Request] = []
    assert (
        run("bridge", "create", "--name", "a", "--wait", session=_recording(api, seen)).exit_code
        == 0
    )
    assert dict(seen[-1].url.params) == {"wait": "true", "wait_timeout": "30"}
    seen.clear()
    assert run("bridge", "create", "--name", "b", session=_recording(api, seen)).exit_code == 0
    assert not seen[-1].url.params


def test_a_timeout_is_one_line_naming_the_agents(api: FakeApi, run: Run) -> None:
    message = "the change is committed, but 1 of 2 concerned agents did not apply it within 5s: h2"
    api.on("DELETE", f"/bridges/{B}", 504, {"message": message, "hosts": ["h2"]})
    out = run("bridge", "delete", B, "--wait", "--wait-timeout", "5")
    out.assert_one_line_error("did not apply", "h2")


def test_reads_and_bad_timeouts_are_refused(run: Run) -> None:
    assert run("bridge", "list", "--wait").exit_code == 2
    assert run("bridge", "create", "--name", "a", "--wait", "--wait-timeout", "0").exit_code == 2
