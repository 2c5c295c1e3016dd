"""Fixtures of the kernel datapath tests: every backend behind one harness.

`harness` is parametrised over "fake", "userspace" and "ebpf" (the kernel ones marked
`root`, skipped without root or the BPF toolchain). A backend's namespaces, devices
and pinned maps are built once per module and removed at its end, even on failure;
each test starts from an empty flow table with nothing pending.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from kdp_harness import Harness, make_harness

from tessera.lab.sandbox import unavailable

BACKENDS = [
    "fake",
    pytest.param("userspace", marks=pytest.mark.root),
    pytest.param("ebpf", marks=pytest.mark.root),
]


def missing(kind: str) -> str | None:
    """Why backend `kind` cannot run here (a skip reason), None if it can."""
    if kind == "fake":
        return None
    if (reason := unavailable()) is not None:
        return reason
    tools = ("clang", "bpftool", "tc") if kind == "ebpf" else ()
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


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
