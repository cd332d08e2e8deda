"""Signed model packages on the dashboard: upload (verified against the trusted keys), list, the files.

An upload is streamed to a temporary file next to the library while it is
hashed, verified with :func:`sdk.package.verify_package` against the keys in
``[packages] trusted_keys_dir`` (the same keys devices get at enrollment), and
only then renamed to ``{sha256}.medge``: a package that does not verify never
becomes downloadable.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select

from dashboard.audit import Actor, record
from dashboard.enrollment import package_url
from dashboard.errors import NotFoundError, PackageRejected, Unavailable
from dashboard.settings import DashboardConfig
from dashboard.store.engine import Store
from dashboard.store.models import Package
from sdk.errors import KeyStoreError, PackageError
from sdk.fleet_contracts import PackageOffer
from sdk.package import verify_package
from sdk.signing import public_key_pem
from sdk.trust import TrustStore

__all__ = ["PackageInfo", "add_package", "get_package", "list_packages", "trusted_key_pems", "trusted_keys"]

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PackageInfo:
    """An uploaded package as the pages and the API show it."""

    sha256: str
    name: str
    version: str
    profile: str
    precision: str
    size: int
    signer_key_id: str
    uploaded_by: str
    uploaded_at: datetime
    path: Path

    @classmethod
    def of(cls, row: Package) -> PackageInfo:
        return cls(
            row.sha256,
            row.name,
            row.version,
            row.profile,
            row.precision,
            row.size,
            row.signer_key_id,
            row.uploaded_by,
            row.uploaded_at,
            Path(row.file_path),
        )

    def offer(self) -> PackageOffer:
        """The package as a device is offered it."""
        return PackageOffer(
            name=self.name, version=self.version, sha256=self.sha256, size=self.size, url=package_url(self.sha256)
        )


def trusted_keys(config: DashboardConfig) -> TrustStore:
    """The package-signing keys of ``[packages] trusted_keys_dir`` (empty if the folder is missing).

    Raises:
        KeyStoreError: a file there is not a public key.
    """
    return TrustStore.load(config.trusted_keys_dir)


def trusted_key_pems(config: DashboardConfig) -> list[str]:
    """The trusted keys as PEM text, in key-id order (what devices get at enrollment)."""
    store = trusted_keys(config)
    return [public_key_pem(store[ident]).decode() for ident in sorted(store)]


def add_package(
    store: Store, config: DashboardConfig, source: BinaryIO, *, actor: Actor, filename: str | None = None
) -> PackageInfo:
    """Keep an uploaded package if it verifies against the trusted keys; audited as ``package.upload``.

    Uploading the same file again returns the package already kept. A refusal
    names ``filename`` (the uploader's name for the file), never the server's paths.

    Raises:
        PackageRejected: too large, not a package, or it does not verify (names the failed check).
        Unavailable: no trusted keys configured, or the library folder cannot be written.
    """
    try:
        trusted = trusted_keys(config)
    except KeyStoreError as exc:
        raise Unavailable(f"the trusted keys cannot be read: {exc}") from exc
    if not len(trusted):
        raise Unavailable(f"no trusted package-signing keys in {config.trusted_keys_dir}: add the signers' *.pub files")
    library = config.packages_dir
    limit = config.packages.max_upload_bytes
    try:
        library.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=library, prefix=".upload-", suffix=".medge")
    except OSError as exc:
        raise Unavailable(f"cannot write to the package folder: {exc.strerror}", path=library) from exc
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as handle:
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PackageRejected(f"the package is larger than the limit of {limit} bytes")
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        if size == 0:
            raise PackageRejected("the upload is empty")
        try:
            package = verify_package(tmp, trusted)
        except PackageError as exc:
            name = Path(filename).name if filename else "the package"
            raise PackageRejected(f"{name} does not verify: {exc.message}") from exc
        sha = digest.hexdigest()
        final = library / f"{sha}.medge"
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    manifest = package.manifest
    with store.write() as session:
        row = session.get(Package, sha)
        if row is None:
            row = Package(
                sha256=sha,
                name=manifest.model.name,
                version=manifest.model.version,
                profile=manifest.engine.profile[:64],
                precision=manifest.engine.precision,
                size=size,
                signer_key_id=package.signer_key_id,
                uploaded_by=actor.name[:64],
                uploaded_at=datetime.now(UTC),
                file_path=str(final),
            )
            session.add(row)
            detail = {"name": row.name, "version": row.version, "signer": row.signer_key_id, "size": size}
            record(session, actor, "package.upload", f"package:{sha}", detail)
        info = PackageInfo.of(row)
    logger.info("package %s %s (%s) uploaded by %s", info.name, info.version, sha[:12], actor.name)
    return info


def list_packages(store: Store) -> list[PackageInfo]:
    """Every package, newest upload first."""
    with store.session() as session:
        return [PackageInfo.of(row) for row in session.scalars(select(Package).order_by(Package.uploaded_at.desc()))]


def get_package(store: Store, sha256: str) -> PackageInfo:
    """One package.

    Raises:
        NotFoundError: no such package.
    """
    with store.session() as session:
        row = session.get(Package, sha256.lower())
        if row is None:
            raise NotFoundError(f"no package {sha256}")
        return PackageInfo.of(row)
