"""Run tempest's network API tests against a Neutron endpoint and count what happened.

tempest (from PyPI, in the test extras) is configured from scratch in a temporary
workspace: tempest.conf with static credentials (`[auth] use_dynamic_credentials =
false` and an accounts.yaml with member, reader, alt and admin accounts, the same ones
the fake Keystone of `support.fake_keystone` accepts), identity v3 at that Keystone, only
Neutron available, and `[network-feature-enabled] api_extensions` set to exactly what the
endpoint's `GET /v2.0/extensions` lists: tempest skips the tests of an extension that is
not listed, so the endpoint decides, never a hand-kept list here.

The tests run in a subprocess, `python -m subunit.run <test ids>` (what stestr itself
runs, without stestr's repository), bounded in time; its subunit v2 stream is parsed
with python-subunit and testtools, so every test, its status and a skip's reason come
from the same machine-readable source tempest's own tooling uses.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import subunit
import testtools
from testtools.testresult.real import TestDict

from support.fake_keystone import Account, default_accounts

#: The address block tempest carves project subnets from (a /28 each).
PROJECT_CIDR = "10.100.0.0/16"
PROJECT_MASK_BITS = 28
#: A tempest run still going after this many seconds is killed and reported as timed out.
DEFAULT_TIMEOUT = 600.0
#: subunit statuses that count as a failure (an unexpected success is one too).
FAILED = ("fail", "uxsuccess")


@dataclass
class TestOutcome:
    """One test id as subunit reported it (a class fixture shows as `setUpClass (...)`)."""

    test_id: str
    status: str  # success, skip, fail, xfail, uxsuccess, exists, inprogress
    reason: str = ""  # a skip's reason, or the traceback of a failure


@dataclass
class TempestResult:
    """Counts and details of one tempest run."""

    outcomes: list[TestOutcome]
    returncode: int
    timed_out: bool
    workspace: Path
    stderr: str = ""
    extensions: list[str] = field(default_factory=list)

    def of(
        self, statuses: Iterable[str], classes: Iterable[str] | None = None
    ) -> list[TestOutcome]:
        """Outcomes with one of `statuses`, of the test classes (dotted ids) if given.

        A class fixture's outcome (`setUpClass (pkg.mod.Class)`) belongs to its class.
        """
        wanted = set(statuses)
        names = tuple(classes) if classes is not None else None
        return [
            o
            for o in self.outcomes
            if o.status in wanted
            and (names is None or any(_in_class(_target(o), name) for name in names))
        ]

    @property
    def passed(self) -> list[TestOutcome]:
        return self.of(["success"])

    @property
    def skipped(self) -> list[TestOutcome]:
        return self.of(["skip"])

    @property
    def failed(self) -> list[TestOutcome]:
        return self.of(FAILED)

    def summary(self) -> str:
        """Human-readable: the counts, then each failure and each skip with its reason."""
        lines = [
            f"tempest: {len(self.passed)} passed, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed (exit {self.returncode}"
            f"{', TIMED OUT' if self.timed_out else ''}; workspace {self.workspace})"
        ]
        lines += [f"  FAIL {o.test_id}\n{_indent(o.reason)}" for o in self.failed]
        lines += [f"  SKIP {o.test_id}: {o.reason.strip()}" for o in self.skipped]
        return "\n".join(lines)


def _in_class(target: str, cls: str) -> bool:
    return target == cls or target.startswith(cls + ".")


def _target(outcome: TestOutcome) -> str:
    """`setUpClass (pkg.mod.Class)` → `pkg.mod.Class`, any other id unchanged."""
    test_id = outcome.test_id
    if test_id.endswith(")") and " (" in test_id:
        return test_id[test_id.index(" (") + 2 : -1]
    return test_id.split("[", 1)[0]


def _indent(text: str, limit: int = 4000) -> str:
    text = text if len(text) <= limit else "..." + text[-limit:]
    return "\n".join("      " + line for line in text.splitlines())


def keystone_token(keystone_url: str, account: Account) -> str:
    """A project-scoped token for `account`, asked of Keystone the way tempest asks."""
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": account.username,
                        "password": account.password,
                        "domain": {"name": "Default"},
                    }
                },
            },
            "scope": {"project": {"name": account.project_name, "domain": {"name": "Default"}}},
        }
    }
    response = httpx.post(f"{keystone_url}/v3/auth/tokens", json=body, timeout=10.0)
    response.raise_for_status()
    return response.headers["X-Subject-Token"]


def endpoint_extensions(neutron_url: str, token: str) -> list[str]:
    """The aliases `GET /v2.0/extensions` of the endpoint lists, sorted."""
    response = httpx.get(
        f"{neutron_url.rstrip('/')}/v2.0/extensions",
        headers={"X-Auth-Token": token, "Accept": "application/json"},
        timeout=10.0,
    )
    response.raise_for_status()
    return sorted(ext["alias"] for ext in response.json()["extensions"])


#: The external network `create_public_network` makes (RFC 5737 TEST-NET-3: it exists
#: only in the NSDB, no packet is sent).
PUBLIC_CIDR = "203.0.113.0/24"


def create_public_network(neutron_url: str, admin_token: str) -> str:
    """An external network and subnet made through the Neutron API (as an operator
    would before running tempest); its id, for `[network] public_network_id`, without
    which tempest skips router gateway and floating IP tests."""
    base, headers = neutron_url.rstrip("/"), {"X-Auth-Token": admin_token}
    net = httpx.post(
        f"{base}/v2.0/networks",
        json={"network": {"name": "public", "router:external": True, "shared": False}},
        headers=headers,
        timeout=10.0,
    )
    net.raise_for_status()
    network_id: str = net.json()["network"]["id"]
    sub = httpx.post(
        f"{base}/v2.0/subnets",
        json={
            "subnet": {
                "name": "public-subnet",
                "network_id": network_id,
                "ip_version": 4,
                "cidr": PUBLIC_CIDR,
            }
        },
        headers=headers,
        timeout=10.0,
    )
    sub.raise_for_status()
    return network_id


def _yaml_string(value: str) -> str:
    """A double-quoted YAML scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def write_workspace(
    workspace: Path,
    keystone_url: str,
    extensions: Sequence[str],
    accounts: Sequence[Account],
    *,
    ipv6: bool = False,
    public_network_id: str | None = None,
) -> Path:
    """tempest.conf and accounts.yaml in `workspace/etc`; returns the config file."""
    etc, logs, locks = workspace / "etc", workspace / "logs", workspace / "locks"
    for d in (etc, logs, locks):
        d.mkdir(parents=True, exist_ok=True)
    accounts_file = etc / "accounts.yaml"
    accounts_file.write_text(
        "".join(
            f"- username: {_yaml_string(a.username)}\n"
            f"  project_name: {_yaml_string(a.project_name)}\n"
            f"  password: {_yaml_string(a.password)}\n"
            f"  domain_name: Default\n"
            f"  roles:\n" + "".join(f"    - {_yaml_string(r)}\n" for r in a.roles)
            for a in accounts
        )
    )
    # all-extensions ("all") would make tempest run tests of extensions the endpoint
    # does not have; an empty list would skip everything: write exactly what it lists.
    ext_list = ",".join(extensions)
    conf = etc / "tempest.conf"
    conf.write_text(
        f"""[DEFAULT]
log_dir = {logs}
log_file = tempest.log
use_stderr = false
debug = true

[oslo_concurrency]
lock_path = {locks}

[auth]
use_dynamic_credentials = false
test_accounts_file = {accounts_file}
default_credentials_domain_name = Default
create_isolated_networks = false
admin_domain_name = Default

[identity]
auth_version = v3
uri_v3 = {keystone_url}/v3
region = RegionOne
catalog_type = identity
admin_role = admin

[identity-feature-enabled]
api_v2 = false

[network]
catalog_type = network
region = RegionOne
endpoint_type = publicURL
project_network_cidr = {PROJECT_CIDR}
project_network_mask_bits = {PROJECT_MASK_BITS}
project_networks_reachable = false
build_timeout = 60
build_interval = 1
{f"public_network_id = {public_network_id}" if public_network_id else ""}

[network-feature-enabled]
api_extensions = {ext_list}
ipv6 = {str(ipv6).lower()}
ipv6_subnet_attributes = false
port_admin_state_change = true
port_security = {str("port-security" in extensions).lower()}
floating_ips = {str("router" in extensions).lower()}

[service_available]
neutron = true
nova = false
glance = false
cinder = false
swift = false
keystone = true
horizon = false
placement = false

[validation]
run_validation = false

[enforce_scope]
neutron = false
"""
    )
    return conf


def parse_subunit(stream: bytes) -> list[TestOutcome]:
    """Every test in a subunit v2 byte stream, with its final status and reason."""
    outcomes: list[TestOutcome] = []

    def on_test(test: TestDict) -> None:
        details = test.get("details", {})
        reason = ""
        if test["status"] == "skip":
            reason = _detail_text(details.get("reason"))
        elif test["status"] in ("fail", "uxsuccess"):
            reason = _detail_text(details.get("traceback")) or "\n".join(
                f"{name}: {_detail_text(value)}" for name, value in details.items()
            )
        outcomes.append(TestOutcome(test["id"], test["status"], reason))

    result = testtools.StreamToDict(on_test)
    result.startTestRun()
    try:
        # Anything that is not a subunit packet (a stray print) becomes an ignored file.
        subunit.ByteStreamToStreamResult(io.BytesIO(stream), non_subunit_name="stdout").run(result)
    finally:
        result.stopTestRun()
    return outcomes


def _detail_text(content: Any) -> str:
    if content is None:
        return ""
    return b"".join(bytes(chunk) for chunk in content.iter_bytes()).decode("utf-8", "replace")


def expand_test_ids(tests: Iterable[str]) -> list[str]:
    """Test ids the unittest loader runs: a package becomes its `test_*` modules.

    `python -m subunit.run tempest.api.network` would load only the package's
    `__init__` and report no test at all; modules, classes and methods stay as given.
    """
    expanded: list[str] = []
    for test_id in tests:
        # Resolved on the file system from the top package's location: importing a tempest
        # module here would load tempest's configuration into this process.
        top, *rest = test_id.split(".")
        spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
        roots = spec.submodule_search_locations if spec is not None else None
        packages = [Path(root, *rest) for root in roots or []]
        package = next((p for p in packages if (p / "__init__.py").is_file()), None)
        if package is None:
            expanded.append(test_id)  # a module, class or method id
            continue
        for path in sorted(package.rglob("test_*.py")):
            expanded.append(".".join((test_id, *path.relative_to(package).with_suffix("").parts)))
    return expanded


def run_tempest(
    keystone_url: str,
    neutron_url: str,
    tests: Sequence[str],
    workspace: Path,
    *,
    accounts: Sequence[Account] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ipv6: bool = False,
    public_network: bool = False,
) -> TempestResult:
    """Configure tempest in `workspace` and run `tests` (test ids: modules, classes, methods).

    The Neutron endpoint is found by tempest through the Keystone catalog; `neutron_url`
    here only serves the extension discovery that shapes `api_extensions` (and, with
    `public_network`, the creation of the external network tempest's gateway and
    floating IP tests need).
    """
    accounts = list(accounts or default_accounts())
    member = next(a for a in accounts if "admin" not in a.roles)
    extensions = endpoint_extensions(neutron_url, keystone_token(keystone_url, member))
    public_network_id = None
    if public_network:
        admin = next(a for a in accounts if "admin" in a.roles)
        public_network_id = create_public_network(neutron_url, keystone_token(keystone_url, admin))
    conf = write_workspace(
        workspace,
        keystone_url,
        extensions,
        accounts,
        ipv6=ipv6,
        public_network_id=public_network_id,
    )
    # No OS_* cloud settings and no proxy of the caller's shell: tempest must talk to
    # the two local servers and nothing else.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OS_") and not k.lower().endswith("_proxy")
    }
    env.update(TEMPEST_CONFIG_DIR=str(conf.parent), TEMPEST_CONFIG=conf.name)
    stdout_path, stderr_path = workspace / "subunit.bin", workspace / "stderr.txt"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "subunit.run", *expand_test_ids(tests)],
            cwd=workspace,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: killed whole on timeout
        )
        timed_out = False
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait(timeout=30)
    return TempestResult(
        outcomes=parse_subunit(stdout_path.read_bytes()),
        returncode=returncode,
        timed_out=timed_out,
        workspace=workspace,
        stderr=stderr_path.read_text(errors="replace"),
        extensions=extensions,
    )
