"""Fixtures of the results tests: the reference package's manifest and identity."""

from __future__ import annotations

import pytest

from sdk.manifest import Manifest
from sdk.package import open_package


@pytest.fixture(scope="package")
def package(reference_packages, tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, str]:
    """The manifest and sha256 of a real (signed, FP32) reference package."""
    built = reference_packages.build(tmp_path_factory.mktemp("sr-package") / "chest-ct-nodule.medge")
    opened = open_package(built)
    return opened.manifest, opened.sha256
