"""Plugins from compile to appliance: recorded in the package, applied on the device, refused when absent.

The documented example plugin distribution is pip-installed into a temporary
folder; a reference package is compiled with it named in the model config.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_profiles import get_profile
from quantization.compile import CompileOptions, CompileResult, compile_package
from runtime.analyzer import Analyzer
from runtime.appliance import Appliance
from runtime.packages import EventSink, PackageSet
from runtime.postprocess import apply_plugin
from sdk.appliance_config import ApplianceConfig
from sdk.errors import EngineError
from sdk.messages import parse_message
from sdk.model_config import ModelConfig, Postprocessing, load_model_config
from sdk.package import open_package, write_package
from sdk.plugins import Classification, PluginRecord, PluginRef, PostprocessEvent, get_registry
from sdk.preprocessing import preprocess
from sdk.reference_model import config_path, onnx_path
from sdk.testing import PhantomSpec, generate_studies
from sdk.trust import TrustStore
from tests.sdk.plugin_distributions import install_example, plugins_on_path, write_distribution, write_test_plugins

PROFILE = "generic-x86_64-cpu"
EXAMPLE = ("medge-plugin-example", "1.0.0")


@dataclass(frozen=True)
class Built:
    with_plugins: Path
    plain: Path
    compiled: CompileResult
    sites: dict[str, Path]
    files: list[Path]
    key: Ed25519PrivateKey
    trusted: TrustStore


def _plugin_config() -> ModelConfig:
    config = load_model_config(config_path())
    return config.model_copy(
        update={
            "preprocessing": config.preprocessing.model_copy(
                update={"plugin": PluginRef(name="contrast-stretch", settings={"low": 1, "high": 99})}
            ),
            "postprocessing": Postprocessing(
                plugin=PluginRef(name="rename-labels", settings={"labels": {"nodule": "pulmonary-nodule"}})
            ),
        }
    )


@pytest.fixture(scope="module")
def built(reference_packages, tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("plugin-packages")
    sites = {
        "example": install_example(root / "example"),
        "misbehaving": write_test_plugins(root / "misbehaving"),
        "newer": write_distribution(
            root / "newer",
            "medge-plugin-example",
            "1.1.0",
            {"medge.preprocess": {"contrast-stretch": "medge_plugin_example:contrast_stretch"}},
        ),
    }
    with plugins_on_path(sites["example"]):
        compiled = compile_package(
            onnx_path(),
            _plugin_config(),
            get_profile(PROFILE),
            reference_packages.calibration,
            reference_packages.key,
            root / "with-plugins.medge",
            CompileOptions(precision="fp32"),
        )
    plain = reference_packages.build(root / "plain.medge")
    truths = generate_studies(root / "studies", 1, PhantomSpec(slices=4), seed=5)
    files = [root / "studies" / str(t.folder) / str(s.file) for t in truths for s in t.series[0].slices]
    return Built(compiled.path, plain, compiled, sites, files, reference_packages.key, reference_packages.trusted)


@pytest.fixture
def installed(built: Built) -> Iterator[None]:
    with plugins_on_path(built.sites["example"], built.sites["misbehaving"]):
        yield


def _folder(tmp_path: Path, *packages: Path) -> Path:
    folder = tmp_path / "packages"
    folder.mkdir()
    for package in packages:
        (folder / package.name).write_bytes(package.read_bytes())
    return folder


def _events() -> tuple[list[tuple[str, str]], EventSink]:
    seen: list[tuple[str, str]] = []
    return seen, lambda kind, severity, message, detail: seen.append((kind, message))


def test_compile_records_the_plugins_and_calibrates_through_them(built: Built) -> None:
    manifest = open_package(built.with_plugins).manifest
    assert manifest.compile.plugins == [
        PluginRecord(kind="preprocess", name="contrast-stretch", distribution=EXAMPLE[0], version=EXAMPLE[1]),
        PluginRecord(kind="postprocess", name="rename-labels", distribution=EXAMPLE[0], version=EXAMPLE[1]),
    ]
    assert manifest.model.preprocessing.plugin == PluginRef(name="contrast-stretch", settings={"low": 1, "high": 99})
    plain = open_package(built.plain).manifest
    assert manifest.compile.calibration is not None and plain.compile.calibration is not None
    assert manifest.compile.calibration.sha256 != plain.compile.calibration.sha256
    # Every calibration tensor went through the stretch: its own 1st and 99th percentiles sit at 0 and 1.
    tensors = built.compiled.calibration.calibration
    low, high = np.percentile(tensors, [1, 99], axis=(1, 2, 3))
    np.testing.assert_allclose(low, 0.0, atol=1e-5)
    np.testing.assert_allclose(high, 1.0, atol=1e-5)


def test_the_appliance_applies_the_packages_plugins(built: Built, installed, tmp_path: Path) -> None:
    seen, sink = _events()
    packages = PackageSet(_folder(tmp_path, built.with_plugins), built.trusted, get_profile(PROFILE), on_event=sink)
    packages.load()
    try:
        assert list(packages.live) == ["chest-ct-nodule"], packages.refused
        live = packages.live["chest-ct-nodule"]
        assert live.golden.ok
        plain = Analyzer(open_package(built.plain), ["CPUExecutionProvider"])
        spec = live.manifest.model.preprocessing
        differs = 0
        for path in built.files:
            ds = pydicom.dcmread(path)
            [analysis] = live.analyzer.analyze(ds)
            [reference] = plain.analyze(ds)
            assert analysis.result.label == "pulmonary-nodule"
            assert set(analysis.result.scores) == {"pulmonary-nodule"}
            assert reference.result.label == "nodule"
            # The score is the engine's on the stretched input, not on the built-in one.
            expected = float(live.analyzer.run_tensor(preprocess(ds, spec))["nodule_probability"].reshape(-1)[0])
            assert analysis.result.score == pytest.approx(expected, abs=1e-6)
            differs += abs(analysis.result.score - reference.result.score) > 1e-4
        assert differs > 0
        plain.close()
    finally:
        packages.close()
    assert seen[-1][0] == "package-live"


def test_a_package_whose_plugin_is_missing_is_refused_and_the_others_go_live(built: Built, tmp_path: Path) -> None:
    seen, sink = _events()
    folder = _folder(tmp_path, built.with_plugins, built.plain)
    with plugins_on_path():
        packages = PackageSet(folder, built.trusted, get_profile(PROFILE), on_event=sink)
        packages.load()
    try:
        assert packages.live["chest-ct-nodule"].path.name == "plain.medge"
        [refused] = packages.refused
        assert refused.path.name == "with-plugins.medge" and refused.check == "plugin"
        assert "preprocess plugin 'contrast-stretch' (medge-plugin-example 1.0.0)" in refused.reason
        assert "no preprocess plugin named 'contrast-stretch' is installed" in refused.reason
        assert ("package-refused", f"with-plugins.medge did not go live: {refused.reason}") in seen
    finally:
        packages.close()


def test_a_package_whose_plugin_has_another_version_is_refused(built: Built, tmp_path: Path) -> None:
    with plugins_on_path(built.sites["newer"], built.sites["example"]):
        packages = PackageSet(_folder(tmp_path, built.with_plugins), built.trusted, get_profile(PROFILE))
        packages.load()
    assert packages.live == {}
    [refused] = packages.refused
    assert refused.check == "plugin"
    assert "needs preprocess plugin 'contrast-stretch' (medge-plugin-example 1.0.0)" in refused.reason
    assert "medge-plugin-example 1.1.0" in refused.reason


def _misbehaving_package(built: Built, out: Path) -> Path:
    """The plugin package re-signed to name plugins that fail on marked instances."""
    package = open_package(built.with_plugins)
    manifest = package.manifest
    model = manifest.model.model_copy(
        update={
            "preprocessing": manifest.model.preprocessing.model_copy(
                update={"plugin": PluginRef(name="explode-on-marker", settings={"marker": "bad-pre"})}
            ),
            "postprocessing": Postprocessing(
                plugin=PluginRef(name="explode-on-marker", settings={"marker": "bad-post"})
            ),
        }
    )
    records = [
        PluginRecord(kind=kind, name="explode-on-marker", distribution="medge-test-plugins", version="0.1.0")
        for kind in ("preprocess", "postprocess")
    ]
    changed = manifest.model_copy(
        update={"model": model, "compile": manifest.compile.model_copy(update={"plugins": records})}
    )
    members = {name: data for name, data in package.members.items() if name in manifest.files}
    write_package(out, changed, members, built.key)
    return out


def test_a_failing_postprocess_plugin_fails_that_instance_with_its_name(
    built: Built, installed, tmp_path: Path
) -> None:
    path = _misbehaving_package(built, tmp_path / "misbehaving.medge")
    analyzer = Analyzer(open_package(path), ["CPUExecutionProvider"])
    try:
        ds = pydicom.dcmread(built.files[0])
        ds.ImageComments = "bad-post"
        with pytest.raises(EngineError, match="postprocess plugin 'explode-on-marker' failed: RuntimeError"):
            analyzer.analyze(ds)
        ds.ImageComments = "fine"
        assert analyzer.analyze(ds)[0].result.label == "checked"
    finally:
        analyzer.close()


def _appliance_config(tmp_path: Path, packages: Path) -> ApplianceConfig:
    return ApplianceConfig(
        appliance={
            "site": "st-marys",
            "device": "ct-1",
            "demo": True,
            "data_dir": tmp_path / "data",
            "profile": PROFILE,
        },
        dicom={"ae_title": "MEDGE", "host": "127.0.0.1", "quiet_time_s": 0.5},
        mqtt={"port": 1883},
        packages={"dir": packages},
    )


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the appliance")


def test_a_failing_plugin_fails_the_instance_and_the_service_keeps_serving(
    built: Built, installed, tmp_path: Path
) -> None:
    package = _misbehaving_package(built, tmp_path / "misbehaving.medge")
    folder = _folder(tmp_path, package)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    marked = []
    for index, (path, comment) in enumerate(zip(built.files, ["bad-pre", "bad-post", "fine"], strict=False)):
        ds = pydicom.dcmread(path)
        ds.ImageComments = comment
        marked.append(inputs / f"{index}.dcm")
        ds.save_as(marked[-1])
    events: list[tuple[str, str]] = []
    config = _appliance_config(tmp_path, folder)
    with Appliance(
        config, trusted=built.trusted, dicom_port=0, on_event=lambda k, s, m, d: events.append((k, m))
    ) as appliance:
        assert "misbehaving.medge" not in str(appliance.packages.refused)
        bad_pre, bad_post, fine = (appliance.submit(path) for path in marked)
        _wait(lambda: appliance.queue.counts().get("quarantined", 0) == 1 and bool(appliance.queue.findings(fine)))
        [finding] = appliance.queue.findings(fine)
        assert parse_message(finding.payload).label == "checked"  # type: ignore[union-attr]
        record = appliance.queue.get(bad_pre)
        assert record is not None and "preprocess plugin 'explode-on-marker' failed" in str(record.reason)
        _wait(
            lambda: any(
                kind == "analysis-failed" and "postprocess plugin 'explode-on-marker'" in message
                for kind, message in events
            )
        )
        assert appliance.queue.findings(bad_post) == []


def test_a_postprocess_plugin_returning_something_else_is_an_engine_error(built: Built, installed) -> None:
    ds = pydicom.dcmread(built.files[0])
    result = Classification("nodule", 0.8, {"nodule": 0.8}, 0.35, True)
    event = PostprocessEvent(result, {}, 0, np.zeros((1, 8, 8), np.float32), ds, load_model_config(config_path()), {})
    with pytest.raises(EngineError, match="postprocess plugin 'wrong-type' returned dict, not a Classification"):
        apply_plugin(get_registry().postprocess_hook(PluginRef(name="wrong-type")), "wrong-type", event)
    broken = [
        (replace(result, score=float("nan")), "not finite Python floats"),
        (replace(result, scores={"nodule": np.float32(0.8)}), "not finite Python floats"),  # type: ignore[dict-item]
        (replace(result, threshold=1.5), "outside"),
        (replace(result, label=""), "without a label"),
    ]
    for returned, reason in broken:
        with pytest.raises(EngineError, match=reason):
            apply_plugin(lambda event, returned=returned: returned, "inline", event)
    assert apply_plugin(lambda event: replace(event.result, positive=False), "inline", event).positive is False
