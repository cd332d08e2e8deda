"""Real plugin distributions for tests: the documented example installed by pip, and hand-written ones.

Everything is installed into a folder of its own (``pip install --target``, or
a ``*.dist-info`` written by hand) and put on ``sys.path`` only inside
:func:`plugins_on_path`, which restores ``sys.path``, the imported modules and
the plugin registry afterwards.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sdk.plugins import get_registry

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "medge-plugin-example"
EXAMPLE_MODULE = "medge_plugin_example"

TEST_MODULE = "medge_test_plugins"
TEST_SOURCE = '''
"""Misbehaving plugins: each breaks one rule of the contract."""

from dataclasses import replace

import numpy as np

def explode_on_marker(settings):
    marker = settings.get("marker", "explode")

    def hook(event):
        if event.ds.get("ImageComments") == marker:
            raise RuntimeError("this plugin fails on marked instances")
        return event.tensor
    return hook


def wrong_shape(settings):
    return lambda event: event.tensor[..., :-1]


def wrong_dtype(settings):
    return lambda event: event.tensor.astype(np.float64)


def not_finite(settings):
    return lambda event: np.full_like(event.tensor, np.nan)


def refuses_settings(settings):
    raise ValueError(f"strength must be positive, got {settings.get('strength')}")


def not_a_hook(settings):
    return 42


def post_explode_on_marker(settings):
    marker = settings.get("marker", "explode")

    def hook(event):
        if event.ds.get("ImageComments") == marker:
            raise RuntimeError("this plugin fails on marked instances")
        return replace(event.result, label="checked")
    return hook


def post_wrong_type(settings):
    return lambda event: {"label": "not a Classification"}
'''
TEST_ENTRY_POINTS = {
    "medge.preprocess": {
        "explode-on-marker": f"{TEST_MODULE}:explode_on_marker",
        "wrong-shape": f"{TEST_MODULE}:wrong_shape",
        "wrong-dtype": f"{TEST_MODULE}:wrong_dtype",
        "not-finite": f"{TEST_MODULE}:not_finite",
        "refuses-settings": f"{TEST_MODULE}:refuses_settings",
        "not-a-hook": f"{TEST_MODULE}:not_a_hook",
    },
    "medge.postprocess": {
        "explode-on-marker": f"{TEST_MODULE}:post_explode_on_marker",
        "wrong-type": f"{TEST_MODULE}:post_wrong_type",
    },
}


def install_example(site: Path) -> Path:
    """``pip install`` the documented example into ``site`` (offline, from a copy: the docs stay clean)."""
    source = site.parent / f"{site.name}-source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [*pip, "--target", str(site), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


def write_distribution(
    site: Path,
    name: str,
    version: str,
    entry_points: Mapping[str, Mapping[str, str]],
    modules: Mapping[str, str] | None = None,
) -> Path:
    """An installed distribution written by hand: ``<name>-<version>.dist-info`` and its modules."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, points in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{point} = {value}" for point, value in points.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    for module, source in (modules or {}).items():
        (site / f"{module}.py").write_text(source)
    return site


def write_test_plugins(site: Path) -> Path:
    """The misbehaving plugins as distribution ``medge-test-plugins`` 0.1.0."""
    return write_distribution(site, "medge-test-plugins", "0.1.0", TEST_ENTRY_POINTS, {TEST_MODULE: TEST_SOURCE})


@contextmanager
def plugins_on_path(*sites: Path) -> Iterator[None]:
    """Make the distributions in ``sites`` installed (first wins), then uninstall them."""
    saved = list(sys.path)
    sys.path[:0] = [str(site) for site in sites]
    _forget()
    try:
        yield
    finally:
        sys.path[:] = saved
        _forget()


def _forget() -> None:
    for module in (EXAMPLE_MODULE, TEST_MODULE):
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
    get_registry.cache_clear()
