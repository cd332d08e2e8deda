"""Each dashboard package exports exactly its public surface, and every name resolves."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

import dashboard.ingest
import dashboard.settings
import dashboard.store


def _public(module: ModuleType) -> set[str]:
    names = {name for name, value in vars(module).items() if not name.startswith("_") and not inspect.ismodule(value)}
    if hasattr(module, "__path__"):  # a package's __init__ re-exports: all of it is its surface
        return names
    return {name for name in names if getattr(vars(module)[name], "__module__", None) == module.__name__}


@pytest.mark.parametrize("module", [dashboard.ingest, dashboard.settings, dashboard.store])
def test_all_is_the_public_surface(module: ModuleType) -> None:
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert _public(module) == set(module.__all__)
