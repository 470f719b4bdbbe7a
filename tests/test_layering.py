"""Imports point down only: a module may import its own package and the layers below it.

cli -> eval -> interpret -> train, pipelines -> checkpoint -> models -> diffusion, nn -> ops
-> kernels, _C;
utils, errors, the version and the backend registry at the bottom; data just above utils. The
package's own ``__init__`` (the public API) and ``_info`` gather from below.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "patronus"
LAYERS = {
    "errors": 0,
    "_version": 0,
    "utils": 1,
    "_backend": 1,
    "kernels": 1,
    "_C": 1,
    "data": 2,
    "ops": 2,
    "nn": 3,
    "diffusion": 3,
    "testing": 3,
    "models": 4,
    "checkpoint": 5,
    "reference_checkpoint": 5,
    "pipelines": 6,
    "train": 6,
    "interpret": 7,
    "eval": 8,
    "_info": 9,
    "patronus": 9,  # the package's __init__: the public API
    "cli": 10,
    "__main__": 11,
}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "patronus"


def imports(path: Path) -> list[str]:
    """The patronus modules a file imports (``from patronus import x`` counts as patronus.x)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "patronus":
                found += [f"patronus.{alias.name}" for alias in node.names]
            elif node.module.startswith("patronus."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("patronus.")]
    return found


FILES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_point_down(path):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    own = unit(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert own in LAYERS, f"{own} has no layer: add it to the picture"
    upward = [
        name for name in imports(path)
        if unit(name) != own and LAYERS[unit(name)] > LAYERS[own]
    ]  # fmt: skip
    assert upward == [], f"{path.name} ({own}) imports upward: {upward}"


def _dunder(name: str) -> bool:
    """``__version__`` and its kind are public by convention, not private names."""
    return name.startswith("__") and name.endswith("__")


def test_no_module_imports_another_packages_private_names():
    private = []
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("patronus")
            ):
                own = path.relative_to(ROOT.parent).parts[1]
                other = node.module.split(".")
                if len(other) > 1 and other[1] != own.removesuffix(".py"):
                    private += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                                if a.name.startswith("_") and a.name != "_backend"
                                and not _dunder(a.name)]  # fmt: skip
    assert private == []
