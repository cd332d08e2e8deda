"""sdk.plugins: entry-point plugins from installed distributions, their contract, and the model config naming them.

The documented example (docs/examples/medge-plugin-example) is installed by
pip into a temporary folder; misbehaving plugins are a hand-written
distribution. Nothing is mocked: importlib.metadata finds them on sys.path.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from sdk.errors import ConfigError, PackageFormatError, PreprocessingError
from sdk.manifest import Manifest
from sdk.model_config import ModelConfig, load_model_config, resolve_plugins
from sdk.plugins import Classification, PluginRecord, PluginRef, PostprocessEvent, get_registry
from sdk.preprocess_spec import PreprocessSpec, Window
from sdk.preprocessing import preprocess
from sdk.reference_model import config_path
from tests.sdk.plugin_distributions import (
    EXAMPLE_MODULE,
    install_example,
    plugins_on_path,
    write_distribution,
    write_test_plugins,
)

SPEC = PreprocessSpec(modalities=["CT"], window=Window(center=0, width=3000), size=(64, 64))


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plugin-sites")
    return {
        "example": install_example(root / "example"),
        "misbehaving": write_test_plugins(root / "misbehaving"),
        "rival": write_distribution(
            root / "rival", "rival-plugins", "2.0.0", {"medge.preprocess": {"contrast-stretch": "rival:stretch"}}
        ),
        "newer": write_distribution(
            root / "newer",
            "medge-plugin-example",
            "1.1.0",
            {"medge.preprocess": {"contrast-stretch": f"{EXAMPLE_MODULE}:contrast_stretch"}},
        ),
    }


@pytest.fixture
def installed(sites: dict[str, Path]) -> Iterator[None]:
    with plugins_on_path(sites["example"], sites["misbehaving"]):
        yield


@pytest.fixture(scope="module")
def ct() -> pydicom.Dataset:
    return pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))


def _with(spec: PreprocessSpec, name: str, **settings: object) -> PreprocessSpec:
    return spec.model_copy(update={"plugin": PluginRef(name=name, settings=settings)})


# --- finding plugins ----------------------------------------------------------------------------------------------


def test_an_installed_plugin_is_found_with_its_distribution_and_loaded_only_when_used(installed) -> None:
    registry = get_registry()
    assert "contrast-stretch" in registry.names("preprocess")
    assert registry.names("postprocess") == ["explode-on-marker", "rename-labels", "wrong-type"]
    record = registry.record("preprocess", "contrast-stretch")
    assert record == PluginRecord(
        kind="preprocess", name="contrast-stretch", distribution="medge-plugin-example", version="1.0.0"
    )
    assert EXAMPLE_MODULE not in sys.modules  # listed, not imported
    hook = registry.preprocess_hook(PluginRef(name="contrast-stretch"))
    assert EXAMPLE_MODULE in sys.modules
    assert registry.preprocess_hook(PluginRef(name="contrast-stretch")) is hook  # made once per settings
    assert registry.preprocess_hook(PluginRef(name="contrast-stretch", settings={"low": 5})) is not hook


def test_an_unknown_name_is_refused_listing_what_is_installed(installed) -> None:
    with pytest.raises(ConfigError) as info:
        get_registry().record("preprocess", "contrast-strech")
    message = str(info.value)
    assert "no preprocess plugin named 'contrast-strech'" in message
    assert "'contrast-stretch'" in message and "medge.preprocess" in message


def test_without_plugins_nothing_is_found(sites: dict[str, Path]) -> None:
    with plugins_on_path(), pytest.raises(ConfigError, match=r"installed: none"):
        get_registry().record("postprocess", "rename-labels")


def test_a_name_registered_by_two_distributions_is_ambiguous(sites: dict[str, Path]) -> None:
    with plugins_on_path(sites["example"], sites["rival"]), pytest.raises(ConfigError) as info:
        get_registry().record("preprocess", "contrast-stretch")
    assert "registered more than once" in str(info.value)
    assert "medge-plugin-example 1.0.0" in str(info.value) and "rival-plugins 2.0.0" in str(info.value)


def test_check_refuses_a_missing_plugin_or_another_version(sites: dict[str, Path]) -> None:
    recorded = PluginRecord(
        kind="preprocess", name="contrast-stretch", distribution="medge-plugin-example", version="1.0.0"
    )
    with plugins_on_path(sites["example"]):
        get_registry().check(recorded)
    with plugins_on_path(), pytest.raises(ConfigError) as info:
        get_registry().check(recorded)
    assert "needs preprocess plugin 'contrast-stretch' (medge-plugin-example 1.0.0)" in str(info.value)
    with plugins_on_path(sites["newer"], sites["example"]), pytest.raises(ConfigError) as info:
        get_registry().check(recorded)
    assert "this environment has it from medge-plugin-example 1.1.0" in str(info.value)


def test_a_factory_that_refuses_its_settings_or_returns_no_hook_is_a_config_error(installed) -> None:
    with pytest.raises(ConfigError, match="refused its settings: strength must be positive") as info:
        get_registry().preprocess_hook(PluginRef(name="refuses-settings", settings={"strength": -1}))
    assert info.value.field == "preprocessing.plugin.settings"
    with pytest.raises(ConfigError, match="returned int, not a callable hook"):
        get_registry().preprocess_hook(PluginRef(name="not-a-hook"))
    with pytest.raises(ConfigError, match=r"need 0 <= low < high <= 100"):
        get_registry().preprocess_hook(PluginRef(name="contrast-stretch", settings={"low": 60, "high": 40}))


# --- the preprocess hook in sdk.preprocessing.preprocess ----------------------------------------------------------


def test_the_preprocess_plugin_runs_after_the_built_in_pipeline(installed, ct: pydicom.Dataset) -> None:
    plain = preprocess(ct, SPEC)
    stretched = preprocess(ct, _with(SPEC, "contrast-stretch", low=2, high=98))
    assert stretched.shape == plain.shape and stretched.dtype == np.float32 and stretched.flags.c_contiguous
    lo, hi = np.percentile(plain, [2, 98])
    expected = np.clip((plain - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(stretched, expected, atol=1e-6)
    assert not np.allclose(stretched, plain)


def test_the_preprocess_plugin_sees_the_layout(installed, ct: pydicom.Dataset) -> None:
    nhwc = SPEC.model_copy(update={"layout": "NHWC", "channels": 3})
    nchw = SPEC.model_copy(update={"channels": 3})
    a = preprocess(ct, _with(nhwc, "contrast-stretch"))
    b = preprocess(ct, _with(nchw, "contrast-stretch"))
    np.testing.assert_allclose(a, b.transpose(0, 2, 3, 1), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("wrong-shape", r"returned float32 \(1, 1, 64, 63\), expected float32 \(1, 1, 64, 64\)"),
        ("wrong-dtype", r"returned float64 \(1, 1, 64, 64\), expected float32"),
        ("not-finite", "returned NaN or infinity"),
    ],
)
def test_a_plugin_breaking_the_contract_fails_the_instance(
    installed, ct: pydicom.Dataset, name: str, reason: str
) -> None:
    with pytest.raises(PreprocessingError, match=reason) as info:
        preprocess(ct, _with(SPEC, name))
    assert f"preprocess plugin '{name}'" in str(info.value)
    assert str(ct.SOPInstanceUID) in str(info.value)


def test_a_raising_plugin_fails_that_instance_only(installed, ct: pydicom.Dataset) -> None:
    spec = _with(SPEC, "explode-on-marker")
    marked = copy.deepcopy(ct)
    marked.ImageComments = "explode"
    with pytest.raises(PreprocessingError, match="preprocess plugin 'explode-on-marker' failed: RuntimeError"):
        preprocess(marked, spec)
    np.testing.assert_array_equal(preprocess(ct, spec), preprocess(ct, SPEC))


def test_a_plugin_that_is_not_installed_fails_preprocessing_clearly(sites, ct: pydicom.Dataset) -> None:
    with plugins_on_path(), pytest.raises(PreprocessingError, match="no preprocess plugin named 'contrast-stretch'"):
        preprocess(ct, _with(SPEC, "contrast-stretch"))


# --- the postprocess hook's contract (the example) ----------------------------------------------------------------


def test_the_example_postprocess_plugin_renames_labels(installed, ct: pydicom.Dataset) -> None:
    config = load_model_config(config_path())
    hook = get_registry().postprocess_hook(
        PluginRef(name="rename-labels", settings={"labels": {"nodule": "pulmonary-nodule"}})
    )
    result = Classification("nodule", 0.8, {"nodule": 0.8}, 0.35, True, 10.0, 12.0)
    event = PostprocessEvent(result, {}, 0, np.zeros((1, 8, 8), np.float32), ct, config, {})
    assert hook(event) == Classification("pulmonary-nodule", 0.8, {"pulmonary-nodule": 0.8}, 0.35, True, 10.0, 12.0)
    with pytest.raises(ConfigError, match="maps two labels onto one name"):
        get_registry().postprocess_hook(PluginRef(name="rename-labels", settings={"labels": {"a": "x", "b": "x"}}))


# --- the model config and the manifest ----------------------------------------------------------------------------

PLUGIN_TOML = """
[preprocessing.plugin]
name = "contrast-stretch"
settings = { low = 1, high = 99 }

[postprocessing.plugin]
name = "rename-labels"
settings = { labels = { nodule = "pulmonary-nodule" } }
"""


def _model_toml(tmp_path: Path, extra: str) -> Path:
    text = config_path().read_text()
    head, gate = text.split("[gate]")
    path = tmp_path / "model.toml"
    path.write_text(head + extra + "\n[gate]" + gate)
    return path


def test_a_model_config_names_its_plugins(installed, tmp_path: Path) -> None:
    config = load_model_config(_model_toml(tmp_path, PLUGIN_TOML))
    assert config.preprocessing.plugin == PluginRef(name="contrast-stretch", settings={"low": 1, "high": 99})
    assert config.postprocessing.plugin is not None and config.postprocessing.plugin.name == "rename-labels"
    assert [record.distribution for record in resolve_plugins(config)] == ["medge-plugin-example"] * 2


def test_a_model_config_naming_an_uninstalled_plugin_is_refused_at_load(sites, tmp_path: Path) -> None:
    path = _model_toml(tmp_path, PLUGIN_TOML)
    with plugins_on_path(), pytest.raises(ConfigError) as info:
        load_model_config(path)
    assert info.value.path == path
    assert info.value.field == "preprocessing.plugin.name"
    assert "no preprocess plugin named 'contrast-stretch'" in str(info.value)


def test_a_model_config_naming_an_ambiguous_plugin_is_refused_at_load(sites, tmp_path: Path) -> None:
    with plugins_on_path(sites["example"], sites["rival"]), pytest.raises(ConfigError, match="more than once"):
        load_model_config(_model_toml(tmp_path, PLUGIN_TOML))


def test_plugin_settings_must_be_json_values(installed, tmp_path: Path) -> None:
    toml = '[preprocessing.plugin]\nname = "contrast-stretch"\nsettings = { since = 2024-01-01 }\n'
    with pytest.raises(ConfigError) as info:
        load_model_config(_model_toml(tmp_path, toml))
    assert info.value.field is not None and info.value.field.startswith("preprocessing.plugin.settings")


def test_a_config_without_plugins_serialises_as_before() -> None:
    dumped = load_model_config(config_path()).model_dump(mode="json")
    assert "postprocessing" not in dumped and "plugin" not in dumped["preprocessing"]
    assert ModelConfig.model_validate(dumped) == load_model_config(config_path())


def _manifest(model: ModelConfig, plugins: list[PluginRecord]) -> dict[str, object]:
    return {
        "format_version": 1,
        "model": model.model_dump(mode="json"),
        "inputs": [{"name": "image", "shape": ["N", 1, 256, 256]}],
        "outputs": [{"name": "nodule_probability", "shape": ["N", 1]}],
        "engine": {"name": "onnxruntime", "files": ["model.onnx"], "precision": "fp32", "profile": "p"},
        "compile": {
            "toolchain": "medge",
            "versions": {},
            "created": "2026-01-01T00:00:00Z",
            "duration_s": 0,
            "method": "fp32",
            "plugins": [record.model_dump() for record in plugins],
        },
    }


def test_the_manifest_records_which_distribution_provided_each_plugin(installed, tmp_path: Path) -> None:
    config = load_model_config(_model_toml(tmp_path, PLUGIN_TOML))
    records = resolve_plugins(config)
    manifest = Manifest.model_validate(_manifest(config, records))
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again.compile.plugins == records
    assert again.model.preprocessing.plugin == config.preprocessing.plugin
    assert b'"distribution": "medge-plugin-example"' in manifest.to_bytes()
    plain = Manifest.model_validate(_manifest(load_model_config(config_path()), []))
    assert b"plugin" not in plain.to_bytes()  # readable by appliances that predate plugins


def test_a_manifest_naming_a_plugin_without_its_record_is_malformed(installed, tmp_path: Path) -> None:
    config = load_model_config(_model_toml(tmp_path, PLUGIN_TOML))
    raw = json.dumps(_manifest(config, resolve_plugins(config)[:1])).encode()
    with pytest.raises(PackageFormatError, match="compile record's plugins"):
        Manifest.from_bytes(raw)
