"""``runtime.ingest`` exports exactly its public surface, and every name resolves."""

from __future__ import annotations

import types

import runtime.ingest
import runtime.spool


def test_all_is_the_public_surface() -> None:
    public = {
        name
        for name in dir(runtime.ingest)
        if not name.startswith("_")
        and name != "annotations"  # from __future__
        and not isinstance(getattr(runtime.ingest, name), types.ModuleType)
    }
    assert public == set(runtime.ingest.__all__)
    for name in runtime.ingest.__all__:
        assert getattr(runtime.ingest, name) is not None, name


def test_spool_exports_resolve() -> None:
    for name in runtime.spool.__all__:
        assert getattr(runtime.spool, name) is not None, name
