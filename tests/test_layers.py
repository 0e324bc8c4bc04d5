"""The architecture, checked: a layer imports only the layers below it, function-local imports
included (no import may hide a cycle), and the core never imports fiftyone. Pure: reads the source."""

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
