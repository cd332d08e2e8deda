"""``runtime.results`` exports exactly its public surface, and every name resolves."""

from __future__ import annotations

import types

import runtime.results


def test_all_is_the_public_surface() -> None:
    public = {
        name
        for name in dir(runtime.results)
        if not name.startswith("_")
        and name != "annotations"  # from __future__
        and not isinstance(getattr(runtime.results, name), types.ModuleType)
    }
    assert public == set(runtime.results.__all__)
    for name in runtime.results.__all__:
        assert getattr(runtime.results, name) is not None, name
