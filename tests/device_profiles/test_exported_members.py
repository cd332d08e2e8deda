"""device_profiles exports exactly its public surface."""

from __future__ import annotations

import device_profiles


def test_all_names_resolve() -> None:
    for name in device_profiles.__all__:
        assert getattr(device_profiles, name) is not None, name


def test_all_is_the_public_surface() -> None:
    modules = {"schema", "loader", "detect", "logging", "annotations"}
    public = {name for name in dir(device_profiles) if not name.startswith("_")} - modules
    assert public == set(device_profiles.__all__)
