"""The lab's naming and address plan, and its state file: pure, no root."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from tessera.lab import names, state
from tessera.lab.errors import LabError
from tessera.lab.state import LabState, VmState
from tessera.lab.vms import check_options


def test_interface_names_fit_the_kernel_limit() -> None:
    fits = "a" * (names.IFNAMSIZ - len(names.VM_LINK_PREFIX))
    assert names.vm_link(fits) == f"vm-{fits}"
    longest_vm = "b" * names.MAX_VM_NAME
    names.check_vm_name(longest_vm)
    links = {names.vm_link(v) for v in (longest_vm, fits + "a", fits + "b", "Database-Server")}
    assert len(links) == 4  # distinct VM names, distinct cables
    assert all(len(link) <= names.IFNAMSIZ for link in links)
    assert names.vm_link("Database-Server") == names.vm_link("Database-Server")
    with pytest.raises(LabError, match="invalid VM name"):
        names.check_vm_name(longest_vm + "a")
    for fixed in (names.UNDERLAY_BRIDGE, names.HOST_UPLINK, names.VM_IFNAME):
        assert len(fixed) <= names.IFNAMSIZ
    assert len(names.host_name(names.MAX_HOSTS)) <= names.IFNAMSIZ  # underlay-side veth


@pytest.mark.parametrize(
    "bad", ["h1", "h12", "H3", "underlay", "Underlay", "", "vm 1", "-vm", "vm.1", "vm/1"]
)
def test_vm_names_that_would_collide_or_break_are_refused(bad: str) -> None:
    with pytest.raises(LabError):
        names.check_vm_name(bad)


@pytest.mark.parametrize("good", ["vm1", "Vm1", "web-server-01", "db_primary", "a"])
def test_ordinary_vm_names_are_accepted(good: str) -> None:
    assert names.check_vm_name(good) == good


@pytest.mark.parametrize("bad", ["my-lab", "", "Lab", "a" * 25, "lab/x"])
def test_lab_names_never_contain_the_separator(bad: str) -> None:
    # '-' separates lab and member in `tsr-LAB-WHAT`: a lab named a-b would own
    # the namespaces of lab a's VM b-...
    with pytest.raises(LabError):
        names.check_lab_name(bad)


def test_namespaces_of_one_lab_never_match_another_labs_prefix() -> None:
    assert not names.netns("ab", "h1").startswith(names.netns_prefix("a"))
    assert names.netns("a", "b-h1").startswith(names.netns_prefix("a"))


def test_underlay_addresses_are_distinct_per_lab_and_inside_the_benchmark_range() -> None:
    seen = set()
    for lab in (0, 1, names.MAX_LABS - 1):
        for host in (1, 2, names.MAX_HOSTS):
            address = ipaddress.IPv4Address(names.underlay_address(lab, host))
            assert address in names.UNDERLAY_NET
            assert address in names.underlay_network(lab)
            seen.add(address)
    assert len(seen) == 9
    assert names.underlay_address(0, 1) == "198.18.0.1"
    with pytest.raises(LabError):
        names.underlay_address(0, names.MAX_HOSTS + 1)
    with pytest.raises(LabError):
        names.underlay_network(names.MAX_LABS)


def test_host_ids_are_stable_per_lab_and_host() -> None:
    assert names.host_id("a", 1) == names.host_id("a", 1)
    assert len({names.host_id("a", 1), names.host_id("a", 2), names.host_id("b", 1)}) == 3


def test_host_index_reads_only_host_names() -> None:
    assert names.host_index("h7") == 7
    assert names.host_index("h0") is None
    assert names.host_index("vm7") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ip": "10.0.0.1/24", "dhcp_": True}, "exclude"),
        ({"gw": "10.0.0.1"}, "--gw needs --ip"),
        ({"ip": "10.0.0.300/24"}, "not ADDR/LEN"),
        ({"ip": "10.0.0.3"}, "prefix length"),
        ({"ip": "10.0.0.3/24", "gw": "x"}, "not an IPv4"),
        ({"mac": "01:00:00:00:00:01"}, "multicast"),
        ({"mac": "02:00:00:00:01"}, "not a MAC"),
        ({"mtu": 67}, "68..65535"),
    ],
)
def test_vm_options_are_checked_before_anything_is_made(
    kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"ip": None, "gw": None, "mac": None, "dhcp_": False, "mtu": None}
    args.update(kwargs)
    with pytest.raises(LabError, match=message):
        check_options(**args)  # type: ignore[arg-type]


def test_vm_options_are_normalised() -> None:
    assert check_options("10.0.0.7/24", "10.0.0.1", "02-AA-00-00-00-01", False, 1400) == (
        "10.0.0.7/24",
        "10.0.0.1",
        "02:aa:00:00:00:01",
    )


def test_state_round_trips_and_resolves_the_only_lab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(state.LAB_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(state, "_netns_labs", lambda: set())
    with pytest.raises(LabError, match="no lab is running"):
        state.resolve(None)
    lab = LabState(name="one", index=state.free_index(), api_port=8181)
    lab.vms["vm1"] = VmState(name="vm1", host="h1", port_id="p", ip="10.0.0.1/24")
    lab.save()
    again = state.resolve(None)
    assert again == lab
    assert again.api_url == "http://127.0.0.1:8181/api/v1"
    assert state.free_index() == lab.index + 1
    LabState(name="two", index=state.free_index()).save()
    with pytest.raises(LabError, match="several labs are running \\(one, two\\)"):
        state.resolve(None)
    assert state.resolve("two").name == "two"
    with pytest.raises(LabError, match="no lab named 'three'"):
        state.resolve("three")
    (tmp_path / "two" / state.STATE_FILE).write_text("{not json")
    with pytest.raises(LabError, match=r"unreadable.*lab down --name two"):
        state.resolve("two")


def test_the_lock_is_exclusive_and_survives_its_directory_being_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(state.LAB_DIR_ENV, str(tmp_path / "labs"))
    with state.locked():
        with pytest.raises(LabError, match="held"), state.locked(timeout=0.3):
            pass
        state.prune_empty_dirs()
        assert not (tmp_path / "labs").exists()
    with state.locked(timeout=1.0):  # made again, and free
        assert (tmp_path / "labs").is_dir()
