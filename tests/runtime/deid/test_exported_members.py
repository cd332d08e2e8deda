"""runtime.deid's public surface is exactly its __all__."""

from __future__ import annotations

import runtime.deid


def test_all_is_the_public_surface() -> None:
    public = {name for name in vars(runtime.deid) if not name.startswith("_")} - {
        "annotations",
        "annex_e",
        "deidentifier",
        "descriptors",
        "errors",
        "export",
        "keys",
    }
    assert public == set(runtime.deid.__all__)
    for name in runtime.deid.__all__:
        assert getattr(runtime.deid, name) is not None
