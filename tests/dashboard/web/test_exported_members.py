"""The dashboard's web-side modules export exactly their public surface, and every name resolves."""

from __future__ import annotations

import ast
import inspect
from types import ModuleType

import pytest

import dashboard.audit
import dashboard.auth
import dashboard.errors
import dashboard.fleet
import dashboard.web
import dashboard.workflow
import dashboard.worklist


def _public(module: ModuleType) -> set[str]:
    """Names a user may import: the package's re-exports, or a module's own classes, functions and CONSTANTS."""
    names = {name for name, value in vars(module).items() if not name.startswith("_") and not inspect.ismodule(value)}
    if hasattr(module, "__path__"):
        return names
    tree = ast.parse(inspect.getsource(module))
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    own = set()
    for name in names:
        value = vars(module)[name]
        if inspect.isclass(value) or inspect.isfunction(value):
            if value.__module__ == module.__name__:
                own.add(name)
        elif name in assigned and name.isupper():
            own.add(name)
    return own


@pytest.mark.parametrize(
    "module",
    [
        dashboard.audit,
        dashboard.auth,
        dashboard.errors,
        dashboard.fleet,
        dashboard.web,
        dashboard.workflow,
        dashboard.worklist,
    ],
)
def test_all_is_the_public_surface(module: ModuleType) -> None:
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert _public(module) == set(module.__all__)
