"""Package round-trip, signing and tamper detection (sdk/package.py, sdk/signing.py, sdk/trust.py)."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sdk.errors import KeyStoreError, PackageFormatError, VerificationError
from sdk.manifest import FORMAT_VERSION, CompileRecord, EngineSpec, Manifest, TensorSpec
from sdk.model_config import ModelConfig
from sdk.package import MANIFEST_NAME, check_package, open_package, verify_package, write_package
from sdk.signing import generate_keypair, load_private_key, load_public_key
from sdk.trust import TrustStore

CONFIG = {
    "name": "test-model",
    "version": "1.2.3",
    "task": "classification",
    "labels": ["nodule"],
    "thresholds": {"nodule": 0.5},
    "input": {"name": "image"},
    "outputs": {"scores": "probability"},
    "preprocessing": {"modalities": ["CT"], "size": [64, 64]},
}
ENGINE_BYTES = bytes(range(256)) * 64


def make_manifest() -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        model=ModelConfig.model_validate(CONFIG),
        inputs=[TensorSpec(name="image", shape=["N", 1, 64, 64])],
        outputs=[TensorSpec(name="probability", shape=["N", 1])],
        engine=EngineSpec(name="onnxruntime", files=["model.onnx"], precision="fp32", profile="generic-x86_64-cpu"),
        compile=CompileRecord(
            toolchain="medge test", versions={}, created=datetime(2026, 1, 1, tzinfo=UTC), duration_s=1, method="fp32"
        ),
    )


@pytest.fixture
def keys(tmp_path: Path):
    pair = generate_keypair(tmp_path / "keys")
    return pair, load_private_key(pair.private_path), TrustStore.from_keys([load_public_key(pair.public_path)])


@pytest.fixture
def package(tmp_path: Path, keys) -> Path:
    _, private, _ = keys
    path = tmp_path / "model.medge"
    write_package(path, make_manifest(), {"model.onnx": ENGINE_BYTES, "golden/000/input.npy": b"x" * 100}, private)
    return path


def test_round_trip(package: Path, keys) -> None:
    pair, _, trusted = keys
    pkg = verify_package(package, trusted)
    assert pkg.read("model.onnx") == ENGINE_BYTES
    assert pkg.signer_key_id == pair.key_id
    assert pkg.manifest.model.name == "test-model"
    assert set(pkg.manifest.files) == {"model.onnx", "golden/000/input.npy"}
    assert [r.check for r in check_package(package, trusted)] == [
        "archive",
        "format",
        "key",
        "signature",
        "files",
        "hashes",
    ]


def test_writing_is_deterministic(tmp_path: Path, keys) -> None:
    _, private, _ = keys
    a, b = tmp_path / "a.medge", tmp_path / "b.medge"
    for path in (a, b):
        write_package(path, make_manifest(), {"model.onnx": ENGINE_BYTES}, private)
    assert a.read_bytes() == b.read_bytes()


def _member_offset(path: Path, name: str) -> int:
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    # Local header: 30 bytes + name + extra, then the data.
    raw = path.read_bytes()
    header = info.header_offset
    name_len = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(raw[header + 28 : header + 30], "little")
    return header + 30 + name_len + extra_len


def test_flipping_any_byte_fails(package: Path, keys, tmp_path: Path) -> None:
    _, _, trusted = keys
    raw = package.read_bytes()
    engine_at = _member_offset(package, "model.onnx")
    manifest_at = _member_offset(package, MANIFEST_NAME)
    positions = {
        0,  # local header signature
        10,  # local header timestamp (not covered by any CRC)
        engine_at,
        engine_at + len(ENGINE_BYTES) // 2,
        engine_at + len(ENGINE_BYTES) - 1,
        manifest_at + 40,
        len(raw) // 2,
        len(raw) - 30,  # central directory
        len(raw) - 1,  # end of central directory
    }
    positions.update(range(0, len(raw), max(1, len(raw) // 25)))
    for position in sorted(positions):
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        victim = tmp_path / f"tampered-{position}.medge"
        victim.write_bytes(bytes(tampered))
        with pytest.raises(VerificationError) as caught:
            verify_package(victim, trusted)
        assert caught.value.check in {"archive", "format", "signature", "hashes", "files"}, position


def test_engine_byte_flip_names_the_check(package: Path, keys, tmp_path: Path) -> None:
    _, _, trusted = keys
    tampered = bytearray(package.read_bytes())
    tampered[_member_offset(package, "model.onnx") + 5] ^= 0xFF
    victim = tmp_path / "t.medge"
    victim.write_bytes(bytes(tampered))
    results = check_package(victim, trusted)
    assert not results[-1].ok
    assert results[-1].check == "archive"  # the zip CRC catches it before the hash does
    assert "model.onnx" in results[-1].detail or "CRC" in results[-1].detail


def _rewrite(package: Path, out: Path, **changes: bytes | None) -> None:
    """Rebuild a package with some members replaced (value) or removed (None), canonical form kept."""
    from sdk.package import _canonical_zip

    with zipfile.ZipFile(package) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name, value in changes.items():
        name = name.replace("__", "/").replace("_dot_", ".")
        if value is None:
            members.pop(name)
        else:
            members[name] = value
    out.write_bytes(_canonical_zip(members))


def test_engine_replaced_with_valid_zip_fails_hash(package: Path, keys, tmp_path: Path) -> None:
    _, _, trusted = keys
    victim = tmp_path / "v.medge"
    _rewrite(package, victim, model_dot_onnx=b"evil" + ENGINE_BYTES[4:])
    with pytest.raises(VerificationError) as caught:
        verify_package(victim, trusted)
    assert caught.value.check == "hashes"
    assert "model.onnx" in str(caught.value)


def test_extra_member_fails_files(package: Path, keys, tmp_path: Path) -> None:
    _, _, trusted = keys
    victim = tmp_path / "v.medge"
    _rewrite(package, victim, payload_dot_sh=b"rm -rf /")
    with pytest.raises(VerificationError) as caught:
        verify_package(victim, trusted)
    assert caught.value.check == "files"


def test_wrong_key_refused(package: Path, tmp_path: Path) -> None:
    other = generate_keypair(tmp_path / "other")
    with pytest.raises(VerificationError) as caught:
        verify_package(package, TrustStore.from_keys([load_public_key(other.public_path)]))
    assert caught.value.check == "key"


def test_forged_signature_with_claimed_key_id_refused(package: Path, keys, tmp_path: Path) -> None:
    pair, _, trusted = keys
    other = generate_keypair(tmp_path / "other")
    forger = load_private_key(other.private_path)
    with zipfile.ZipFile(package) as archive:
        manifest_bytes = archive.read(MANIFEST_NAME)
    import base64

    block = {"algorithm": "ed25519", "key_id": pair.key_id, "signature": base64.b64encode(forger.sign(manifest_bytes))}
    block["signature"] = block["signature"].decode()  # type: ignore[union-attr]
    victim = tmp_path / "v.medge"
    _rewrite(package, victim, signature=json.dumps(block).encode())
    with pytest.raises(VerificationError) as caught:
        verify_package(victim, trusted)
    assert caught.value.check == "signature"


def test_unsigned_refused(package: Path, keys, tmp_path: Path) -> None:
    _, _, trusted = keys
    victim = tmp_path / "v.medge"
    _rewrite(package, victim, signature=None)
    with pytest.raises(VerificationError) as caught:
        verify_package(victim, trusted)
    assert caught.value.check == "format"
    assert "unsigned" in str(caught.value)


def test_unknown_format_version_refused(tmp_path: Path, keys) -> None:
    _, private, trusted = keys
    manifest = make_manifest()
    raw = json.loads(manifest.to_bytes())
    raw["format_version"] = 99
    with pytest.raises(PackageFormatError, match="format version 99"):
        Manifest.from_bytes(json.dumps(raw).encode())
    # A package whose manifest claims version 99 (re-signed by a trusted key) is still refused.
    from sdk.package import _canonical_zip, _signature_block

    manifest_bytes = json.dumps(raw).encode()
    victim = tmp_path / "v99.medge"
    victim.write_bytes(
        _canonical_zip({MANIFEST_NAME: manifest_bytes, "signature": _signature_block(private, manifest_bytes)})
    )
    with pytest.raises(VerificationError) as caught:
        verify_package(victim, trusted)
    assert caught.value.check == "format"
    assert "version 99" in str(caught.value)


def test_not_a_package(tmp_path: Path, keys) -> None:
    _, _, trusted = keys
    junk = tmp_path / "junk.medge"
    junk.write_bytes(b"this is not a zip")
    with pytest.raises(VerificationError) as caught:
        open_package(junk)
    assert caught.value.check == "archive"
    with pytest.raises(VerificationError):
        verify_package(tmp_path / "missing.medge", trusted)


def test_member_names_are_checked(tmp_path: Path, keys) -> None:
    _, private, _ = keys
    for bad in ("../evil", "/abs", MANIFEST_NAME, "a\\b"):
        with pytest.raises(PackageFormatError):
            write_package(tmp_path / "x.medge", make_manifest(), {bad: b"x"}, private)


def test_key_generation_refuses_overwrite_and_protects_private_key(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path)
    assert pair.private_path.stat().st_mode & 0o077 == 0
    with pytest.raises(KeyStoreError, match="exists"):
        generate_keypair(tmp_path)
    assert generate_keypair(tmp_path, overwrite=True).key_id != pair.key_id


def test_bad_key_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    with pytest.raises(KeyStoreError, match=r"junk\.pub"):
        load_public_key(junk)
    with pytest.raises(KeyStoreError, match="not found"):
        load_private_key(tmp_path / "nope.key")


def test_trust_store_from_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGE_CONFIG_DIR", str(tmp_path / "etc"))
    pair = generate_keypair(tmp_path / "k")
    store = TrustStore.load()
    assert len(store) == 0
    assert store.add(pair.public_path) == pair.key_id
    assert pair.key_id in TrustStore.load()
