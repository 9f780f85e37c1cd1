"""Layers point one way (docs/design.md, "Layers"): every import of every module under ``lightning_elastic``, including
imports inside functions and ``TYPE_CHECKING`` blocks, goes to its own package or a lower layer, and the modules
import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lightning_elastic"

#: the layer of each top-level part (higher may import lower or equal-package, never higher; equal layers are
#: independent and may not import each other)
LAYERS = {
    "core": 0,
    "ops": 1,
    "adapters": 2,
    "supernet": 3,
    "__init__": 4,  # the public facade: core ... supernet eagerly; training / search only by name, lazily
    "testing": 4,
    "modules": 4,
    "training": 4,
    "data": 5,  # its text data modules load tokenizers through modules.pretrained
    "search": 5,  # measures with training's BatchNorm recalibration
    "cli": 6,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    return parse_imports(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")


def parse_imports(source: str, name: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, lightning_elastic module)`` for every import statement in ``source``, wherever it is."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*sub.split(".")) / "__init__.py").is_file()
                found.append((node.lineno, sub if is_module else base))
    return [(line, mod) for line, mod in found if mod == "lightning_elastic" or mod.startswith("lightning_elastic.")]


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, list[tuple[int, str]]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_violations(graph: dict[str, list[tuple[int, str]]]) -> list[str]:
    bad = []
    for module, imports in graph.items():
        mine = _part(module)
        for line, target in sorted(set(imports)):
            theirs = _part(target)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{module}:{line} imports {target} ({mine} is layer {LAYERS[mine]}, {theirs} "
                           f"{LAYERS[theirs]})")
    return bad


def import_cycles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """Cycles between modules (a package ``__init__`` importing its own submodules does not count as an edge back
    from them unless a submodule imports the package itself)."""
    edges = {m: sorted({t for _, t in imports if t in graph and t != m}) for m, imports in graph.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in edges:
        if node not in state:
            visit(node, [node])
    return cycles


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _graph()}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_no_module_imports_a_higher_layer():
    assert layer_violations(_graph()) == []


def test_no_import_cycles():
    assert import_cycles(_graph()) == []


def test_the_checks_see_function_level_and_type_checking_imports():
    # the detector itself: a lazy import and a TYPE_CHECKING import of a higher layer, and a cycle through them
    graph = {
        "lightning_elastic.core.a": [(3, "lightning_elastic.supernet.b")],  # e.g. inside `if TYPE_CHECKING:`
        "lightning_elastic.supernet.b": [(9, "lightning_elastic.core.a")],  # e.g. inside a function
    }
    assert layer_violations(graph) == ["lightning_elastic.core.a:3 imports lightning_elastic.supernet.b (core is "
                                       "layer 0, supernet 3)"]
    assert import_cycles(graph) == [["lightning_elastic.core.a", "lightning_elastic.supernet.b",
                                     "lightning_elastic.core.a"]]
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lightning_elastic.supernet import supernet"
              "\n\ndef f():\n    import lightning_elastic.cli.main\n    from ..search import run\n")
    found = parse_imports(source, "lightning_elastic.core.m")
    assert sorted(found) == [(3, "lightning_elastic.supernet.supernet"), (6, "lightning_elastic.cli.main"),
                             (7, "lightning_elastic.search.run")]
