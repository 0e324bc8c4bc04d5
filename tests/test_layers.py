"""The architecture, checked: a layer imports only the layers below it, no module of the package
imports itself back through others (function-local imports included: an import moved into a
function body still ties the two modules together), and the core never imports fiftyone.
Pure: reads the source."""

import ast
import pathlib

import pytest

from .helpers import REPO_ROOT

PACKAGE = pathlib.Path(REPO_ROOT) / "sam3_ops"
#: lower layers first; a module may import its own layer and those before it
LAYERS = ("core", "sdk", "curation", "app")


def _layer(module: str) -> int | None:
    """The rank of a ``sam3_ops.<layer>...`` module in :data:`LAYERS`, ``None`` outside them."""
    parts = module.split(".")
    if parts[0] != "sam3_ops":
        return None
    if len(parts) == 1:
        return len(LAYERS)  # the package's facade: above every layer
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (anywhere in it, function bodies included), absolute names."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    return _imports_of(path.read_text(), package)


def _imports_of(source: str, package: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((node.lineno, name))
            if node.module is None:  # "from . import x": x is a module of the package
                found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


MODULES = sorted(p for layer in LAYERS for p in (PACKAGE / layer).glob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """``{module: the modules of sources it imports}`` from ``{module: (source, is_package)}``.

    ``from pkg import name`` imports ``pkg.name`` when that is a module, else ``pkg`` itself; a
    package's ``__init__`` run on the way to one of its modules is not an edge (it imports nothing
    of the package here; its own imports are its edges)."""
    graph = {}
    for module, (source, is_package) in sources.items():
        package = module if is_package else module.rsplit(".", 1)[0]
        targets = set()
        for _, name in _imports_of(source, package):
            while name and name not in sources:  # "import pkg.mod.attr" style: the module it names
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
        graph[module] = targets - {module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
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


def _package_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    return _import_graph({_module_name(p): (p.read_text(), p.name == "__init__.py") for p in paths})


def test_every_layer_has_modules():
    assert {p.parent.name for p in MODULES} == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_layer_imports_only_the_layers_below_it(path):
    own = LAYERS.index(path.parent.name)
    upward = [
        f"line {line}: {name}" for line, name in _imports(path) if (rank := _layer(name)) is not None and rank > own
    ]
    assert not upward, f"{path.parent.name}/{path.name} imports a layer above its own: {upward}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_core_never_imports_fiftyone(path):
    found = [f"line {line}: {name}" for line, name in _imports(path) if name.split(".")[0] == "fiftyone"]
    assert not found, found


def test_the_checker_sees_function_local_and_relative_imports():
    """The checker itself: upward imports hidden in a function body are found, relative or not."""
    source = "def f():\n    from ..app import forms\n    from . import engine\n    import sam3_ops.sdk.settings\n"
    names = [name for _, name in _imports_of(source, "sam3_ops.core")]
    assert names == ["sam3_ops.app", "sam3_ops.core", "sam3_ops.core.engine", "sam3_ops.sdk.settings"]
    assert [_layer(name) for name in names] == [3, 0, 0, 1]


def test_no_import_cycle_between_the_packages_modules():
    """Any cycle, inside a layer too, with function-local imports counted."""
    graph = _package_graph()
    assert len(graph) >= len(MODULES) and sum(map(len, graph.values())) > len(MODULES)  # it read the imports
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_finds_cycles_hidden_in_function_bodies():
    """The checker itself: a cycle through a function-local, relative import is found; a chain is not one."""
    sources = {
        "sam3_ops.sdk": ("", True),
        "sam3_ops.sdk.a": ("from .b import thing\n", False),
        "sam3_ops.sdk.b": ("def f():\n    from . import c\n", False),
        "sam3_ops.sdk.c": ("def g():\n    import sam3_ops.sdk.a.helper\n", False),
        "sam3_ops.sdk.d": ("from .a import thing\n", False),
    }
    graph = _import_graph(sources)
    assert graph["sam3_ops.sdk.b"] == {"sam3_ops.sdk", "sam3_ops.sdk.c"}
    assert graph["sam3_ops.sdk.c"] == {"sam3_ops.sdk.a"}
    assert _cycles(graph) == [["sam3_ops.sdk.a", "sam3_ops.sdk.b", "sam3_ops.sdk.c"]]
    sources["sam3_ops.sdk.c"] = ("", False)
    assert _cycles(_import_graph(sources)) == []
