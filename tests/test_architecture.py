"""The tree keeps the shape it promises: three wings, a sans-IO protocol, no import cycle.

Read from the source (the AST of every module), not from what happens to be imported at run
time: ``aionamespace/__init__.py`` imports every wing, so only the source tells what one module
needs. Imports under ``if TYPE_CHECKING:`` and inside functions are not module dependencies.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "aionamespace"

#: Nothing in protocol/ may do I/O, or depend on a library that does (threading is no I/O:
#: the codec keeps a packer per thread).
IO_MODULES = {
    "socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
    "anyio",
    "trio",
    "subprocess",
    "multiprocessing",
    "sqlite3",
    "redis",
}

MAX_MODULE_LINES = 450  # "modules stay small (~400 lines)"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def module_imports(name: str) -> set[str]:
    """What ``name`` imports when it is imported: absolute module names, top level only."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:  # top-level statements only: no function bodies
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(inner, ast.Import):
                found.update(alias.name for alias in inner.names)
            elif isinstance(inner, ast.ImportFrom):
                if inner.level:
                    base = package.split(".")
                    base = base[: len(base) - inner.level + 1]
                    target = ".".join([*base, inner.module] if inner.module else base)
                else:
                    target = inner.module or ""
                found.add(target)
                for alias in inner.names:  # `from . import calls` imports a module
                    if f"{target}.{alias.name}" in MODULES:
                        found.add(f"{target}.{alias.name}")
    return found


def internal(imports: set[str]) -> set[str]:
    return {name for name in imports if name in MODULES}


@pytest.mark.parametrize("name", [n for n in MODULES if n.startswith("aionamespace.protocol")])
def test_the_protocol_imports_no_io(name: str) -> None:
    """protocol/ imports no socket, no event loop, no thread: only the standard library's
    pure modules, msgpack, itself and the exception tree (which imports nothing)."""
    imports = module_imports(name)
    io = {i for i in imports if i.split(".")[0] in IO_MODULES}
    assert not io, f"{name} imports {io}"
    outside = {
        i
        for i in internal(imports)
        if not i.startswith("aionamespace.protocol") and i != "aionamespace._errors"
    }
    assert not outside, f"{name} depends on {outside}"


def test_the_exception_tree_imports_nothing_of_ours_or_of_io() -> None:
    imports = module_imports("aionamespace._errors")
    assert not internal(imports)
    assert not {i for i in imports if i.split(".")[0] in IO_MODULES}


def test_the_server_wing_does_not_import_the_client_wing() -> None:
    for name in MODULES:
        if name.startswith("aionamespace.server"):
            client = {
                i for i in internal(module_imports(name)) if i.startswith("aionamespace.client")
            }
            assert not client, f"{name} imports {client}"


def test_no_import_cycle() -> None:
    """Module-level imports between our modules form no cycle (a package's ``__init__``
    re-exporting its own modules is not one)."""
    graph = {
        name: {
            i for i in internal(module_imports(name)) if not name.startswith(i + ".")
        }  # a module needs its package's __init__
        for name in MODULES
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package's __init__ importing its own modules
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for name in sorted(graph):
        if not state.get(name):
            visit(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines: split it by idea"


def test_the_three_wings_are_there() -> None:
    for wing in ("protocol", "server", "client", "server.stores"):
        assert f"aionamespace.{wing}" in MODULES


@pytest.mark.parametrize(
    ("backend", "transport"), [("asyncio", "asyncio_transport"), ("trio", "trio_transport")]
)
def test_an_awaited_get_visits_three_client_modules(backend: str, transport: str) -> None:
    """``await ns.x``: the proxy, its transport, the request table; nothing else of the
    client wing runs (the protocol's own modules do the encoding and parsing)."""
    import anyio

    from aionamespace import AsyncNamespace, ServerThread

    visited: set[str] = set()

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "call":
            visited.add(frame.f_globals.get("__name__", ""))  # type: ignore[attr-defined]

    async def main(address: object) -> None:
        ns = AsyncNamespace(address, "path")
        ns.x = 1
        await ns._flush()
        assert await ns.x == 1  # connected, warm
        sys.setprofile(profile)  # (this thread's: on trio, the reader's calls too)
        try:
            assert await ns.x == 1
        finally:
            sys.setprofile(None)
        await ns._close()

    with ServerThread() as server:
        anyio.run(main, server.address, backend=backend)
    client = sorted(m for m in visited if m.startswith("aionamespace.client"))
    assert client == sorted(
        [
            "aionamespace.client.asynchronous",
            f"aionamespace.client.{transport}",
            "aionamespace.client.requests",
        ]
    ), sorted(visited)
