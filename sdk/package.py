"""Model package files (``*.medge``): write, open, verify.

A package is a ZIP archive in one canonical form: members stored
uncompressed, sorted by name, with fixed timestamps and attributes. It holds
``manifest.json`` (which lists the SHA-256 of every other member),
``signature`` (Ed25519 over the manifest bytes, with the signer's key id) and
the engine files, golden samples and reports.

Verification runs these checks, in order, and names the one that failed:

``archive``    the file is a readable ZIP in canonical form, so no byte outside
               the signed content can change unnoticed (zip headers included);
``format``     manifest present, JSON, known format version, valid fields;
``key``        the signing key is one of the trusted keys;
``signature``  the signature over the manifest bytes checks out;
``files``      the members are exactly the manifest's files, no more, no less;
``hashes``     every member's SHA-256 matches the manifest.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sdk.durable_files import write_atomic
from sdk.errors import PackageFormatError, VerificationError
from sdk.manifest import Manifest
from sdk.signing import key_id, sign, signature_valid

__all__ = [
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "CheckResult",
    "ModelPackage",
    "check_package",
    "open_package",
    "verify_package",
    "write_package",
]

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature"
_RESERVED = {MANIFEST_NAME, SIGNATURE_NAME}
_EPOCH = (1980, 1, 1, 0, 0, 0)
CHECKS = ("archive", "format", "key", "signature", "files", "hashes")


def _canonical_zip(members: Mapping[str, bytes]) -> bytes:
    """The one byte encoding of a set of members (same input, same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            archive.writestr(info, members[name])
    return buffer.getvalue()


def _check_member_name(name: str) -> None:
    if not name or name.startswith("/") or "\\" in name or ".." in name.split("/") or name in _RESERVED:
        raise PackageFormatError(f"invalid package member name {name!r}")


def _signature_block(private_key: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    block = {
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(sign(private_key, manifest_bytes)).decode(),
    }
    return (json.dumps(block, sort_keys=True, indent=2) + "\n").encode()


def write_package(
    path: str | Path, manifest: Manifest, files: Mapping[str, bytes], private_key: Ed25519PrivateKey
) -> Manifest:
    """Write a signed package atomically and return the manifest as written.

    The manifest's ``files`` is filled with the SHA-256 of each member; the
    archive is written to a temporary file, fsync'd and renamed into place, so
    a crash never leaves half a package under ``path``.
    """
    path = Path(path)
    for name in files:
        _check_member_name(name)
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    final = manifest.model_copy(update={"files": hashes})
    # Re-validate: model_copy does not, and a manifest that cannot be read back must not be written.
    manifest_bytes = Manifest.from_bytes(final.to_bytes()).to_bytes()
    members = dict(files)
    members[MANIFEST_NAME] = manifest_bytes
    members[SIGNATURE_NAME] = _signature_block(private_key, manifest_bytes)
    data = _canonical_zip(members)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o644)
    return Manifest.from_bytes(manifest_bytes)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one verification check."""

    check: str
    ok: bool
    detail: str


@dataclass
class ModelPackage:
    """An opened package: manifest, signer and members, held in memory.

    Open with :func:`open_package` (structure only) or :func:`verify_package`
    (structure, trust, signature and hashes).
    """

    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    signer_key_id: str
    signature: bytes
    members: dict[str, bytes] = field(repr=False)

    def read(self, name: str) -> bytes:
        """A member's bytes.

        Raises:
            PackageFormatError: no such member.
        """
        try:
            return self.members[name]
        except KeyError:
            raise PackageFormatError(f"package has no member {name!r}", path=self.path) from None

    @property
    def sha256(self) -> str:
        """The SHA-256 of the manifest bytes: the package's identity."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()


class _Checks:
    """Collects check results and raises on the first failure."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: list[CheckResult] = []

    def ok(self, check: str, detail: str) -> None:
        self.results.append(CheckResult(check, True, detail))

    def fail(self, check: str, detail: str) -> VerificationError:
        self.results.append(CheckResult(check, False, detail))
        return VerificationError(detail, check=check, path=self.path)


def _read_archive(checks: _Checks) -> dict[str, bytes]:
    path = checks.path
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise checks.fail("archive", "package file not found") from None
    except OSError as exc:
        raise checks.fail("archive", f"cannot read package: {exc.strerror}") from exc
    members: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            for info in archive.infolist():
                if info.filename in members:
                    raise checks.fail("archive", f"duplicate member {info.filename!r}")
                members[info.filename] = archive.read(info)
    # RuntimeError: zipfile on a member flagged encrypted (a tampered flag bit).
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError, EOFError, RuntimeError) as exc:
        raise checks.fail("archive", f"not a readable medge package archive ({exc})") from exc
    if _canonical_zip(members) != raw:
        raise checks.fail("archive", "archive bytes differ from the canonical form: the file was altered")
    checks.ok("archive", f"{len(members)} members, canonical form")
    return members


def _parse(checks: _Checks, members: dict[str, bytes]) -> tuple[Manifest, bytes, str, bytes]:
    if MANIFEST_NAME not in members:
        raise checks.fail("format", f"package has no {MANIFEST_NAME}")
    if SIGNATURE_NAME not in members:
        raise checks.fail("format", f"package has no {SIGNATURE_NAME} file: unsigned packages are refused")
    manifest_bytes = members[MANIFEST_NAME]
    try:
        manifest = Manifest.from_bytes(manifest_bytes)
    except PackageFormatError as exc:
        raise checks.fail("format", str(exc)) from exc
    try:
        block = json.loads(members[SIGNATURE_NAME])
        if block.get("algorithm") != "ed25519":
            raise ValueError(f"unsupported signature algorithm {block.get('algorithm')!r}")
        signer = str(block["key_id"])
        signature = base64.b64decode(block["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise checks.fail("format", f"signature file is malformed ({exc})") from exc
    checks.ok("format", f"format version {manifest.format_version}, {manifest.model.name} {manifest.model.version}")
    return manifest, manifest_bytes, signer, signature


def open_package(path: str | Path) -> ModelPackage:
    """Open a package and check its structure, without checking trust or hashes.

    Raises:
        VerificationError: the archive or its format is unusable (``check`` says which).
    """
    checks = _Checks(Path(path))
    members = _read_archive(checks)
    manifest, manifest_bytes, signer, signature = _parse(checks, members)
    return ModelPackage(checks.path, manifest, manifest_bytes, signer, signature, members)


def _verify(path: Path, trusted: Mapping[str, Ed25519PublicKey], checks: _Checks) -> ModelPackage:
    members = _read_archive(checks)
    manifest, manifest_bytes, signer, signature = _parse(checks, members)
    if signer not in trusted:
        known = ", ".join(sorted(trusted)) or "none"
        raise checks.fail("key", f"signed by key {signer}, which is not trusted (trusted: {known})")
    checks.ok("key", f"signed by trusted key {signer}")
    if not signature_valid(trusted[signer], signature, manifest_bytes):
        raise checks.fail("signature", "Ed25519 signature over the manifest does not verify")
    checks.ok("signature", "Ed25519 signature over the manifest verifies")
    present = set(members) - _RESERVED
    listed = set(manifest.files)
    if present != listed:
        missing, extra = sorted(listed - present), sorted(present - listed)
        raise checks.fail("files", f"members differ from the manifest (missing {missing}, not listed {extra})")
    checks.ok("files", f"{len(listed)} files, as listed")
    for name in sorted(listed):
        if hashlib.sha256(members[name]).hexdigest() != manifest.files[name]:
            raise checks.fail("hashes", f"sha256 of {name!r} does not match the manifest")
    checks.ok("hashes", "every file matches its sha256")
    return ModelPackage(path, manifest, manifest_bytes, signer, signature, members)


def check_package(path: str | Path, trusted: Mapping[str, Ed25519PublicKey]) -> list[CheckResult]:
    """Run every check and return the results; stops at the first failure (its result is last)."""
    checks = _Checks(Path(path))
    with contextlib.suppress(VerificationError):
        _verify(checks.path, trusted, checks)
    return checks.results


def verify_package(path: str | Path, trusted: Mapping[str, Ed25519PublicKey]) -> ModelPackage:
    """Open a package and prove it is intact and signed by a trusted key.

    Raises:
        VerificationError: a check failed; ``error.check`` names it.
    """
    checks = _Checks(Path(path))
    return _verify(checks.path, trusted, checks)
