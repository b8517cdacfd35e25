"""The floor plan of DESIGN.md, enforced: imports flow one way, hooks have one home.

Every module of the package is parsed (imports inside functions included). Layers, bottom up:

    core  <-  data, viz  <-  models  <-  families  <-  report  <-  app, cli

A module may import its own layer's package and anything below; a family never imports another
family (what two families share moves down into ``core``). ``models`` may read ``data`` (the
training loop needs the built-in datasets). The package root (``underhood/__init__.py``) is the
public face and loads families lazily; nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "underhood"

FAMILIES = ("weights", "activations", "attribution", "synthesis", "adversarial", "influence", "transfer", "hardware")
RANK = {"core": 0, "data": 1, "viz": 1, "models": 2, **dict.fromkeys(FAMILIES, 3), "report": 4, "app": 5, "cli": 6,
        "__main__": 7}
ALLOWED = {  # the packages each layer may import, besides itself
    "core": set(),
    "data": {"core"},
    "viz": {"core"},
    "models": {"core", "data"},
    **{f: {"core", "data", "models", "viz"} for f in FAMILIES},
    "report": {"core", "data", "models", "viz", *FAMILIES},
    "app": {"core", "data", "models", "viz", *FAMILIES, "report"},
    "cli": {"core", "data", "models", "viz", *FAMILIES, "report", "app"},
    "__main__": {"cli"},
}
HOOK_CALLS = ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
              "register_full_backward_pre_hook", "register_backward_hook", "register_hook",
              "register_module_forward_hook", "register_module_forward_pre_hook",
              "register_module_full_backward_hook", "register_module_full_backward_pre_hook")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, (path, _) in MODULES.items()}


def _target(name: str) -> str:
    """The most specific module of the package that ``name`` denotes (a name inside a module: that module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """``(imported module, line, names taken from it)`` for every import of the package in ``module``."""
    _, package = MODULES[module]
    here = module.split(".") if package else module.split(".")[:-1]
    out = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            out += [(_target(a.name), node.lineno, ()) for a in node.names if a.name.split(".")[0] == "underhood"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "underhood":
                base = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    out.append((sub, node.lineno, ()))
                else:
                    out.append((_target(base), node.lineno, (alias.name,)))
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m) if t != m} for m in MODULES}


def test_every_package_has_a_place_on_the_floor_plan():
    unknown = sorted({_layer(m) for m in MODULES if _layer(m)} - set(RANK))
    assert not unknown, f"packages with no layer in the floor plan: {unknown}; add them to RANK and ALLOWED"


def test_imports_flow_one_way():
    wrong = []
    for module in sorted(MODULES):
        layer = _layer(module)
        if not layer:
            continue  # the package root: the public face, loads families lazily
        path = MODULES[module][0].relative_to(SRC.parent)
        for target, line, _ in _imports(module):
            other = _layer(target)
            if not other:
                wrong.append(f"{path}:{line} imports the package root ({target}); import from the module that "
                             "defines the name")
            elif other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{path}:{line} {layer} -> {other} ({target})")
    assert not wrong, "imports against the floor plan:\n" + "\n".join(wrong)


def test_no_import_cycle_between_files():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles between files: " + "; ".join(" - ".join(c) for c in cycles)


def test_the_checker_sees_back_edges_and_cycles():
    """The parser resolves relative imports, imports inside functions and package-level names."""
    imports = dict((t, n) for t, _, n in _imports("underhood.report"))
    assert "underhood.core.io" in imports
    assert ("underhood.core.hooks" in {t for t, _, _ in _imports("underhood.core.layers")})
    func_level = {t for t, _, _ in _imports("underhood.models.training")}
    assert "underhood.data.splits" in func_level


def test_hooks_have_one_home():
    strays = []
    for module, (path, _) in sorted(MODULES.items()):
        if module == "underhood.core.hooks":
            continue
        for node in ast.walk(TREES[module]):
            if isinstance(node, ast.Attribute) and node.attr in HOOK_CALLS:
                strays.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.attr}")
    assert not strays, "hooks registered outside core/hooks.py (use core.hooks.hooked or capture):\n" + \
        "\n".join(strays)


@pytest.mark.parametrize("package", ["cli", "report"])
def test_no_private_name_is_imported_across_files(package):
    """Shared helpers of the command line and the report have public names in one module."""
    wrong = []
    for module in sorted(m for m in MODULES if _layer(m) == package):
        for target, line, names in _imports(module):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and target != module:
                wrong.append(f"{MODULES[module][0].relative_to(SRC.parent)}:{line} {', '.join(private)} from {target}")
    assert not wrong, "private names imported across files:\n" + "\n".join(wrong)
