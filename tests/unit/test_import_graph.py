"""The import graph runs one way: a package imports only packages below it.

    model → nsdb → packet → simulation → datapath → client → agent → cluster → clikit
          → api | lab | neutron → cli

- `simulation` is pure: of tessera it imports `model` and `packet` only (no NSDB, no
  rich, no typer); the API reads the topology for it (`tessera.api.snapshot`).
- `client` (the REST API's HTTP client and the one-line `UserError`s) imports no other
  tessera package, so the agent's commands, the toolkit and the lab can all use it.
- `cluster` (the cluster node: its services, their elections, its configuration, the
  embedded ZooKeeper) may use what the agent may. Two front ends import it: the API
  (`tessera api serve` is a cluster node with the API and the janitor) and the CLI
  (`tessera cluster serve|config|status|services`); the lab starts nodes as processes
  (`tessera cluster serve`), never by import.
- `clikit` is the toolkit commands are written with (session, output, params, command
  registration, the root group); `tessera.cli` (the commands and their assembly) and the
  lab's commands use it.
- `api`, `lab` and `neutron` (the Neutron v2.0 API) are peers and never import each
  other; `cli` is on top: it serves the
  API (`tessera api serve`) and loads the lab's and the agent's commands as plugins.
  Nothing imports `cli`.

Every import counts, including those inside functions and under `TYPE_CHECKING`: a lazy
import is still a dependency. No module imports itself through others either (imports
that run, inside functions included; `TYPE_CHECKING` ones never run). Plugins named as
strings (`tessera.cli.main.PLUGINS`) are not imports and are not checked here.
Third-party libraries of the front ends stay in them (`FRONT_END_LIBRARIES`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tessera

SRC = Path(tessera.__file__).resolve().parent

#: Bottom to top; a package may import the packages of lower tiers, none of its own tier.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("model",),
    ("nsdb",),
    ("packet",),
    ("simulation",),
    ("datapath",),
    ("client",),
    ("cassandra",),
    ("agent",),
    ("cluster", "placement"),
    ("clikit",),
    ("api", "lab", "neutron"),
    ("cli",),
)
#: Packages allowed less than their tier would allow.
ONLY: dict[str, frozenset[str]] = {
    "simulation": frozenset({"model", "packet"}),
    "client": frozenset(),
}
#: Third-party libraries → the modules (and their submodules) that may import them.
FRONT_END_LIBRARIES: dict[str, tuple[str, ...]] = {
    "typer": (
        "tessera.clikit",
        "tessera.cli",
        "tessera.lab",
        "tessera.agent.cli",
        "tessera.agent.flows_cli",
    ),
    "rich": ("tessera.clikit", "tessera.cli", "tessera.agent.flows_cli"),
    "httpx": ("tessera.client", "tessera.clikit", "tessera.cli", "tessera.lab"),
    "fastapi": ("tessera.api", "tessera.neutron"),
    "starlette": ("tessera.api", "tessera.neutron"),
    # cluster.http serves the HTTP services' apps; only they import it (lazily, when a
    # node starts them), so the CLI never pays for uvicorn.
    "uvicorn": ("tessera.api", "tessera.neutron", "tessera.cluster.http"),
    "kazoo": ("tessera.nsdb",),
    # The Cassandra driver: the client module and the placement store only (the agent's
    # durable flow state and the lab go through tessera.cassandra).
    "cassandra": ("tessera.cassandra.client", "tessera.placement.store"),
}

TIER = {package: index for index, tier in enumerate(LAYERS) for package in tier}


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}: {self.why}"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The module a `from ... import` names, relative forms resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(module: str, source: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, at any depth."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            name = absolute(module, node, is_package)
            yield node.lineno, name
            if name == "tessera":  # `from tessera import cli` imports tessera.cli
                for alias in node.names:
                    if (SRC / alias.name).is_dir() or (SRC / f"{alias.name}.py").exists():
                        yield node.lineno, f"tessera.{alias.name}"


def package_of(module: str) -> str | None:
    """The layer a tessera module belongs to; None for the root (`tessera.__version__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tessera" else None


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def check_module(module: str, source: str, is_package: bool = False) -> list[Violation]:
    """What `module` imports against the layers; empty when it keeps to them."""
    own = package_of(module)
    found: list[Violation] = []
    for line, imported in imports(module, source, is_package):
        top = imported.split(".")[0]
        if top in FRONT_END_LIBRARIES and not _within(module, FRONT_END_LIBRARIES[top]):
            allowed = ", ".join(FRONT_END_LIBRARIES[top])
            found.append(Violation(module, line, imported, f"{top} belongs to {allowed}"))
        target = package_of(imported)
        if own is None or target is None or target == own or top != "tessera":
            continue
        if target not in TIER:
            found.append(Violation(module, line, imported, f"'{target}' is in no layer"))
        elif own in ONLY:
            if target not in ONLY[own]:
                allowed = ", ".join(sorted(ONLY[own])) or "no other tessera package"
                found.append(Violation(module, line, imported, f"{own} may import {allowed}"))
        elif TIER[target] >= TIER[own]:
            where = "the same tier as" if TIER[target] == TIER[own] else "above"
            found.append(Violation(module, line, imported, f"{target} is {where} {own}"))
    return found


def runtime_imports(module: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The tessera modules `module` imports when it runs (any depth, not those under
    `if TYPE_CHECKING:`), each resolved to a module in `known`: `from tessera.packet
    import tcp` is an import of tessera.packet.tcp, not of the package."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(sub) for sub in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = absolute(module, node, is_package)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def all_modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SRC.rglob("*.py")):
        yield module_name(path), path


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert packages - set(TIER) == set(), "place new packages in LAYERS"
    assert set(TIER) - packages == set(), "LAYERS names a package that does not exist"


def test_every_import_goes_down_the_layers() -> None:
    violations = [
        str(v)
        for module, path in all_modules()
        for v in check_module(module, path.read_text(), path.name == "__init__.py")
    ]
    assert violations == [], "\n".join(violations)


def test_no_module_imports_itself_through_others() -> None:
    modules = dict(all_modules())
    known = set(modules)
    graph = {
        module: runtime_imports(module, path.read_text(), path.name == "__init__.py", known)
        for module, path in modules.items()
    }
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_lazy_cycle() -> None:
    known = {"tessera.nsdb.base", "tessera.nsdb.memory", "tessera.nsdb.codec"}
    sources = {
        "tessera.nsdb.base": "def open_nsdb():\n    from tessera.nsdb.memory import Memory\n",
        "tessera.nsdb.memory": "from tessera.nsdb.base import Nsdb\n",
        "tessera.nsdb.codec": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from tessera.nsdb.memory import Memory\n"
        ),
    }
    graph = {m: runtime_imports(m, s, False, known) for m, s in sources.items()}
    assert graph["tessera.nsdb.codec"] == set()
    assert cycles(graph) == [["tessera.nsdb.base", "tessera.nsdb.memory"]]


@pytest.mark.parametrize(
    ("module", "source", "offence"),
    [
        ("tessera.simulation.x", "def f():\n    from tessera.cli import main\n", "tessera.cli"),
        ("tessera.simulation.x", "from tessera.nsdb.base import Nsdb\n", "tessera.nsdb.base"),
        ("tessera.simulation.x", "import rich.tree\n", "rich.tree"),
        ("tessera.agent.x", "from tessera import cli\n", "tessera.cli"),
        ("tessera.lab.x", "from tessera.api.app import create_app\n", "tessera.api.app"),
        (
            "tessera.client.x",
            "from tessera.clikit.session import Session\n",
            "tessera.clikit.session",
        ),
        ("tessera.nsdb.store.x", "from ..zookeeper import ZookeeperNsdb\n", None),
        ("tessera.nsdb.x", "from ..agent import hostid\n", "tessera.agent"),
        ("tessera.datapath.x", "import typer\n", "typer"),
    ],
)
def test_the_check_names_the_offending_import(
    module: str, source: str, offence: str | None
) -> None:
    found = check_module(module, "from typing import TYPE_CHECKING\n" + source)
    assert [v.imported for v in found] == ([] if offence is None else [offence])
    line = len(source.splitlines()) + 1  # after the prefix line, at any depth
    assert all(v.module == module and v.line == line and str(v).startswith(module) for v in found)
