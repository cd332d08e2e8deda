"""Ed25519 signing keys: generate, load, save, sign and verify.

Keys are stored as PEM (PKCS#8 private, SubjectPublicKeyInfo public). A key is
named by its *key id*: the first 16 hex digits of the SHA-256 of the raw
32-byte public key, so a package's signature says which key made it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sdk.errors import KeyStoreError

__all__ = [
    "KeyPair",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_pem",
    "sign",
    "signature_valid",
]

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def key_id(public_key: Ed25519PublicKey) -> str:
    """The short, stable name of a public key (16 hex digits)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """The PEM text of a public key."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class KeyPair:
    """Where a generated key pair was written."""

    private_path: Path
    public_path: Path
    key_id: str


def generate_keypair(out_dir: str | Path, name: str = "medge-signing", *, overwrite: bool = False) -> KeyPair:
    """Make a new Ed25519 key pair in ``out_dir`` (private key readable by the owner only).

    Raises:
        KeyStoreError: a key of that name exists and ``overwrite`` is false, or
            the folder cannot be written.
    """
    out_dir = Path(out_dir)
    private_path = out_dir / f"{name}{PRIVATE_SUFFIX}"
    public_path = out_dir / f"{name}{PUBLIC_SUFFIX}"
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise KeyStoreError("a key of this name exists already; pass --force to replace it", path=private_path)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        public_path.write_bytes(public_key_pem(private.public_key()))
    except OSError as exc:
        raise KeyStoreError(f"cannot write key: {exc.strerror}", path=out_dir) from exc
    return KeyPair(private_path, public_path, key_id(private.public_key()))


def _load_pem(path: str | Path, what: str, parse: Callable[[bytes], object], kind: type[Any]) -> Any:
    path = Path(path)
    try:
        key = parse(path.read_bytes())
    except FileNotFoundError as exc:
        raise KeyStoreError(f"{what} not found", path=path) from exc
    except (OSError, ValueError, TypeError) as exc:
        raise KeyStoreError(f"not a readable PEM {what} ({exc})", path=path) from exc
    if not isinstance(key, kind):
        raise KeyStoreError(f"expected an Ed25519 key, found {type(key).__name__}", path=path)
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key.

    Raises:
        KeyStoreError: missing, unreadable, or not an Ed25519 private key.
    """
    return _load_pem(
        path, "private key", lambda data: serialization.load_pem_private_key(data, password=None), Ed25519PrivateKey
    )


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key.

    Raises:
        KeyStoreError: missing, unreadable, or not an Ed25519 public key.
    """
    return _load_pem(path, "public key", serialization.load_pem_public_key, Ed25519PublicKey)


def sign(private_key: Ed25519PrivateKey, data: bytes) -> bytes:
    """Sign ``data``; Ed25519 signatures are deterministic, so the same input signs the same."""
    return private_key.sign(data)


def signature_valid(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s signature over ``data``."""
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
