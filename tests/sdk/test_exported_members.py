"""The facade exports exactly its public surface, and every name resolves."""

from __future__ import annotations

import sdk


def test_all_names_resolve() -> None:
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name


def test_all_is_the_public_surface() -> None:
    public = {name for name in dir(sdk) if not name.startswith("_")}
    assert public == set(sdk.__all__)


def test_unknown_name() -> None:
    import pytest

    with pytest.raises(AttributeError):
        _ = sdk.does_not_exist  # type: ignore[attr-defined]


def test_all_matches_the_lazy_table() -> None:
    assert set(sdk.__all__) == set(sdk._EXPORTS)
