"""Fixtures of the kernel datapath tests: every backend behind one harness.

`harness` is parametrised over "fake", "userspace" and "ebpf" (the kernel ones marked
`root`, skipped without root or the BPF toolchain). A backend's namespaces, devices
and pinned maps are built once per module and removed at its end, even on failure;
each test starts from an empty flow table with nothing pending.

`netns` is for the tests that build their own hosts (the userspace and eBPF backends
with real traffic): a sandbox factory whose namespaces are all removed at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dp_netns import PREFIX as NETNS_PREFIX
from kdp_harness import Harness, make_harness
from kdp_probe import KeyProbe

from support.ebpf import toolchain_missing
from tessera.lab.sandbox import SandboxFactory, unavailable

BACKENDS = [
    "fake",
    pytest.param("userspace", marks=pytest.mark.root),
    pytest.param("ebpf", marks=pytest.mark.root),
]


def missing(kind: str) -> str | None:
    """Why backend `kind` cannot run here (a skip reason), None if it can."""
    if kind == "fake":
        return None
    return toolchain_missing() if kind == "ebpf" else unavailable()


@pytest.fixture(scope="session")
def obj_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compiled BPF objects, once per session."""
    return tmp_path_factory.mktemp("bpf-obj")


def built(kind: str, obj_cache: Path) -> Iterator[Harness]:
    reason = missing(kind)
    if reason:
        pytest.skip(reason)
    h = make_harness(kind, obj_cache)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module", params=BACKENDS)
def module_harness(request: pytest.FixtureRequest, obj_cache: Path) -> Iterator[Harness]:
    yield from built(request.param, obj_cache)


@pytest.fixture
def harness(module_harness: Harness) -> Harness:
    module_harness.reset()
    return module_harness


@pytest.fixture(scope="module")
def fake_harness(obj_cache: Path) -> Iterator[Harness]:
    yield from built("fake", obj_cache)


@pytest.fixture(scope="module")
def ebpf_harness(obj_cache: Path) -> Iterator[Harness]:
    yield from built("ebpf", obj_cache)


@pytest.fixture(scope="module")
def key_probe(obj_cache: Path) -> Iterator[KeyProbe]:
    reason = missing("ebpf")
    if reason:
        pytest.skip(reason)
    probe = KeyProbe(obj_cache)
    try:
        yield probe
    finally:
        probe.close()


@pytest.fixture
def netns() -> Iterator[SandboxFactory]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    factory = SandboxFactory(NETNS_PREFIX)
    try:
        yield factory
    finally:
        factory.cleanup()
