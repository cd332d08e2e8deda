"""Key rotation: change the package-signing keys a device trusts, on the word of a key it trusts now.

A :class:`~sdk.fleet_contracts.KeyRotation` adds and retires keys; it must
be endorsed (signed offline) by a key in the device's trust store, so a
dashboard alone cannot make a device trust a key. The store never ends up
empty, and never without the key of a live package (a device that could no
longer verify what it runs would refuse it at the next restart). Keys are
added before any is retired, each file atomically, so a kill half-way
leaves a superset of the old keys, never less. A rotation issued before the
last one applied is refused (a replay could bring back a retired key).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from firmware_integration.ota.errors import OtaError
from sdk.durable_files import fsync_dir, write_atomic
from sdk.errors import KeyStoreError
from sdk.fleet_contracts import KeyRotation
from sdk.signing import PUBLIC_SUFFIX, key_id, load_public_key, public_key_pem

__all__ = ["RotationResult", "rotate_keys"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RotationResult:
    """What a rotation changed."""

    added: list[str]
    retired: list[str]
    trusted: list[str]
    repeated: bool = False
    """the same rotation was applied before (a re-sent command): nothing changed."""


def _parse_key(pem: str, index: int) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise OtaError(f"not a PEM public key: {exc}", field=f"add.{index}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise OtaError(f"not an Ed25519 key ({type(key).__name__})", field=f"add.{index}")
    return key


def _fingerprint(rotation: KeyRotation) -> str:
    return hashlib.sha256(rotation.signed_bytes()).hexdigest()


def _last_applied(record: Path) -> tuple[datetime, str] | None:
    try:
        data = json.loads(record.read_bytes())
        return datetime.fromisoformat(data["issued"]), str(data["fingerprint"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.error("the record of the last key rotation %s is unreadable (%s); ignoring it", record, exc)
        return None


def rotate_keys(
    folder: Path,
    rotation: KeyRotation,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    needed: Mapping[str, str],
    record: Path,
) -> RotationResult:
    """Apply an endorsed rotation to the trust store in ``folder``.

    Args:
        folder: the trust store's folder (``*.pub`` files).
        rotation: the keys to add and retire, endorsed by a trusted key.
        trusted: the keys trusted now.
        needed: key id → what cannot do without it (the live packages it signed).
        record: where the last rotation applied is remembered (replay protection).

    Raises:
        OtaError: not endorsed by a trusted key, a bad key, a replay, or the
            result would leave no key or drop the key of a live package (nothing changed).
    """
    signer = trusted.get(rotation.signer)
    if signer is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise OtaError(f"endorsed by key {rotation.signer}, which this device does not trust (trusted: {known})")
    if not rotation.endorsed_by(signer):
        raise OtaError(f"the endorsement by key {rotation.signer} does not verify: the rotation was altered")
    fingerprint = _fingerprint(rotation)
    last = _last_applied(record)
    if last is not None:
        if last[1] == fingerprint:
            return RotationResult([], [], sorted(trusted), repeated=True)
        if rotation.issued <= last[0]:
            raise OtaError(
                f"issued {rotation.issued.isoformat()}, not after the last rotation applied "
                f"({last[0].isoformat()}): an old rotation is not applied again"
            )
    adding = {key_id(key): key for key in (_parse_key(pem, i) for i, pem in enumerate(rotation.add))}
    retiring = set(rotation.retire)
    if both := sorted(retiring & set(adding)):
        raise OtaError(f"key(s) {', '.join(both)} are both added and retired")
    remaining = (set(trusted) | set(adding)) - retiring
    if not remaining:
        raise OtaError("the rotation would retire the last trusted key; a device always keeps one")
    for ident, user in sorted(needed.items()):
        if ident not in remaining:
            raise OtaError(f"key {ident} signed the live package {user}; it cannot be retired while that runs")
    folder.mkdir(parents=True, exist_ok=True)
    added = []
    for ident, key in sorted(adding.items()):
        if ident not in trusted:
            write_atomic(folder / f"{ident}{PUBLIC_SUFFIX}", public_key_pem(key), mode=0o644)
            added.append(ident)
    retired = []
    for path in sorted(folder.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            ident = key_id(load_public_key(path))
        except KeyStoreError:
            continue  # not ours to judge here; the trust store reports it when it loads
        if ident in retiring:
            path.unlink()
            retired.append(ident)
    fsync_dir(folder)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, json.dumps({"issued": rotation.issued.isoformat(), "fingerprint": fingerprint}).encode())
    log.info("trusted keys rotated: added %s, retired %s", added or "none", retired or "none")
    return RotationResult(added, sorted(set(retired)), sorted(remaining))
