"""The dependency rule of docs/ARCHITECTURE.md ("Rooms and arrows"), enforced on the source.

    enclave_constructs ─┐
    local_backend ──────┼──> enclavekit (the core)
    enclave_app ────────┘    (enclave_app: the pure format modules only)

Inside enclavekit/, the linter, the CLI and the parent agent are rooms above the shared core
(ROOMS): they import the core, the core never imports them, and the linter and the agent import
no other room. The pytest plugin drives a deployment, so it lives in the backend
(local_backend/pytest_plugin.py).

The core never imports the backend, the constructs, aws_cdk or moto. The CLI room crosses into
the backend through one gateway module (GATEWAYS), only lazily. ALLOWED (exceptions, each with
its reason) is empty and only shrinks: an entry no longer needed fails too.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("local_backend", "enclave_constructs", "constructs", "aws_cdk", "moto", "enclave_app")
# The modules the enclave image vendors (enclave_app/enclave.json): stdlib + cbor2 +
# cryptography only, never aws_cdk, moto or yaml.
PURE = json.loads((ROOT / "enclave_app" / "enclave.json").read_text())["vendor"]
PURE_THIRD_PARTY = ("cbor2", "cryptography")

# (core file, top-level package it imports) -> why it is still there (none left; the list
# only shrinks, so keep it empty).
ALLOWED: dict[tuple[str, str], str] = {}
# The CLI calls every part, so one module of its room is its gateway into the backend: only
# there, and only lazily (inside a function, or for type checking), may the CLI import
# `local_backend`. `enclavekit lint` and the image commands then run without the backend.
GATEWAYS: dict[str, str] = {"enclavekit/cli/backend.py": "local_backend"}

# Rooms inside enclavekit/ above the shared core: file or folder -> the module names it holds.
ROOMS: dict[str, tuple[str, ...]] = {
    "lint": ("enclavekit.lint",),
    "cli": ("enclavekit.cli", "enclavekit.__main__"),
    "agent": ("enclavekit.agent", "enclavekit.agent_bundle"),
}
ROOM_FILES = {
    "lint": ("enclavekit/lint/",),
    "cli": ("enclavekit/cli/", "enclavekit/__main__.py"),
    "agent": ("enclavekit/agent.py", "enclavekit/agent_bundle.py"),
}
# Which rooms a room may import besides the core.
ROOM_MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "lint": (),
    "agent": (),
    "cli": ("lint", "agent"),
}


def _room_of_file(rel: str) -> str | None:
    for room, prefixes in ROOM_FILES.items():
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in prefixes):
            return room
    return None


def _room_of_module(module: str) -> str | None:
    for room, names in ROOMS.items():
        if any(module == n or module.startswith(n + ".") for n in names):
            return room
    return None


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports inside functions count)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def test_core_imports_nothing_above_it() -> None:
    found: set[tuple[str, str]] = set()
    for path in sorted((ROOT / "enclavekit").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for module in _imports(path):
            if _top(module) in UPPER and GATEWAYS.get(rel) != _top(module):
                found.add((rel, _top(module)))
    new = sorted(found - set(ALLOWED))
    stale = sorted(set(ALLOWED) - found)
    assert not new, f"the core imports upward (see docs/ARCHITECTURE.md): {new}"
    assert not stale, f"no longer imported: remove from ALLOWED in {__file__}: {stale}"


def _module_level_imports(tree: ast.Module) -> set[str]:
    """What a module imports when it is imported (not in functions, not for type checking)."""
    out: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return out


def test_gateways_cross_only_lazily() -> None:
    for rel, package in GATEWAYS.items():
        path = ROOT / rel
        eager = sorted(
            m for m in _module_level_imports(ast.parse(path.read_text())) if _top(m) == package
        )
        assert not eager, f"{rel} imports {eager} when it is imported: only inside a function"
        assert package in {_top(m) for m in _imports(path)}, f"{rel} no longer crosses: remove it"


def test_rooms_import_the_core_and_the_core_imports_no_room() -> None:
    bad = []
    for path in sorted((ROOT / "enclavekit").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        mine = _room_of_file(rel)
        allowed = {mine, *ROOM_MAY_IMPORT.get(mine or "", ())} if mine else {None}
        for module in sorted(_imports(path)):
            theirs = _room_of_module(module) if _top(module) == "enclavekit" else None
            if theirs is not None and theirs not in allowed:
                bad.append(f"{rel} ({mine or 'core'}) imports {module} ({theirs})")
    assert not bad, "an arrow against the rooms of docs/ARCHITECTURE.md: " + "; ".join(bad)


def test_enclave_program_imports_only_pure_modules() -> None:
    for path in sorted((ROOT / "enclave_app").rglob("*.py")):
        for module in _imports(path):
            top = _top(module)
            assert top not in UPPER or top == "enclave_app", f"{path.name} imports {module}"
            if top == "enclavekit" and module != "enclavekit":
                owner = ".".join(module.split(".")[:2])
                assert owner in PURE, f"{path.name} imports {module}: not a vendored pure module"


def test_pure_modules_import_only_pure_modules() -> None:
    import sys

    for name in PURE:
        path = ROOT / (name.replace(".", "/") + ".py")
        for module in _imports(path):
            top = _top(module)
            if top == "enclavekit":
                owner = ".".join(module.split(".")[:2])
                assert module == "enclavekit" or owner in PURE, f"{name} imports {module}"
            else:
                assert top in sys.stdlib_module_names or top in PURE_THIRD_PARTY, (
                    f"{name} imports {module}: the enclave image has only the stdlib, "
                    f"{', '.join(PURE_THIRD_PARTY)} and the pure modules"
                )


def test_constructs_and_backend_do_not_import_each_other() -> None:
    pairs = (
        ("constructs/enclave_constructs", ("local_backend", "enclave_app")),
        ("local_backend", ("enclave_constructs", "aws_cdk")),
    )
    for folder, banned in pairs:
        for path in sorted((ROOT / folder).rglob("*.py")):
            bad = sorted(m for m in _imports(path) if _top(m) in banned)
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _relative_graph(package: Path) -> dict[str, set[str]]:
    """module -> sibling modules it imports with `from .x import` (at any depth)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
        graph[path.stem] = deps
    return graph


def test_constructs_have_no_import_cycle() -> None:
    """A construct module never imports, even lazily, one that imports it back."""
    graph = _relative_graph(ROOT / "constructs" / "enclave_constructs")
    graph.pop("__init__", None)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for dep in graph.get(start, ()):
            if dep == goal or (dep not in seen and reaches(dep, goal, seen | {dep})):
                return True
        return False

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not cycles, f"construct modules in an import cycle: {cycles}"
