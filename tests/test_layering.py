"""The architecture is visible and kept: spec at the bottom, the backends beside each other above it, the public
classes above them. An import that runs upward, or from one backend into another, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "doppel_torch"
# layer -> what it may import from doppel_torch (besides itself); rng is a leaf utility every layer may use.
ALLOWED = {
    "spec": {"spec"},
    "backends.base": {"spec", "rng"},
    "backends.torch": {"spec", "rng", "backends.base"},
    "backends.triton": {"spec", "rng", "backends.base"},
    "backends.cpu": {"spec", "rng", "backends.base"},
    "backends": {"spec", "rng", "backends.base"},  # backends/__init__.py re-exports base
}


def _layer(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("doppel_torch"):
            found.update(f"{node.module}.{a.name}" for a in node.names)  # a name may be a submodule
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("doppel_torch"))
    return {name.removeprefix("doppel_torch.") for name in found}


def test_imports_run_downward_only():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        layer = _layer(module)
        if layer is None:
            continue
        for imported in _imports(path):
            target = _layer(imported) or imported.split(".")[0]
            if target != layer and target not in ALLOWED[layer]:
                bad.append(f"{module} imports doppel_torch.{imported}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)
