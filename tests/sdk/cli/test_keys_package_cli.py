"""``medge keys`` and ``medge package`` from the command line (sdk/cli/keys.py, sdk/cli/package.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdk.cli.main import app
from sdk.package import write_package
from sdk.signing import load_private_key
from tests.sdk.test_package import ENGINE_BYTES, make_manifest

runner = CliRunner()


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("MEDGE_CONFIG_DIR", str(folder))
    return folder


def make_package(tmp_path: Path, key_dir: Path) -> Path:
    path = tmp_path / "m.medge"
    write_package(path, make_manifest(), {"model.onnx": ENGINE_BYTES}, load_private_key(key_dir / "medge-signing.key"))
    return path


def test_generate_trust_verify(tmp_path: Path, config_dir: Path) -> None:
    keys = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "generate", "--out", str(keys)])
    assert result.exit_code == 0, result.output
    assert (keys / "medge-signing.key").exists()
    package = make_package(tmp_path, keys)

    result = runner.invoke(app, ["package", "verify", str(package)])
    assert result.exit_code == 1
    assert "not trusted" in result.output

    result = runner.invoke(app, ["package", "verify", str(package), "--trust", str(keys / "medge-signing.pub")])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output

    result = runner.invoke(app, ["keys", "trust", str(keys / "medge-signing.pub")])
    assert result.exit_code == 0, result.output
    assert list((config_dir / "trusted_keys").glob("*.pub"))
    result = runner.invoke(app, ["package", "verify", str(package)])
    assert result.exit_code == 0, result.output
    for check in ("archive", "format", "key", "signature", "files", "hashes"):
        assert check in result.output


def test_verify_names_the_failed_check(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    runner.invoke(app, ["keys", "generate", "--out", str(keys), "--trust"])
    package = make_package(tmp_path, keys)
    raw = bytearray(package.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    package.write_bytes(bytes(raw))
    result = runner.invoke(app, ["package", "verify", str(package)])
    assert result.exit_code == 1
    assert "FAIL" in result.output
    assert "verification failed" in result.output


def test_inspect(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    runner.invoke(app, ["keys", "generate", "--out", str(keys)])
    package = make_package(tmp_path, keys)
    result = runner.invoke(app, ["package", "inspect", str(package)])
    assert result.exit_code == 0, result.output
    assert "test-model 1.2.3" in result.output
    assert "generic-x86_64-cpu" in result.output
    result = runner.invoke(app, ["package", "inspect", str(package), "--json"])
    assert '"format_version": 1' in result.output


def test_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "junk.medge"
    junk.write_text("not a package")
    result = runner.invoke(app, ["package", "inspect", str(junk)])
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "k")])
    result = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "k")])
    assert result.exit_code == 2
    assert "exists already" in result.output
    result = runner.invoke(app, ["keys", "trust", str(junk)])
    assert result.exit_code == 2
    assert "not a readable PEM public key" in result.output
