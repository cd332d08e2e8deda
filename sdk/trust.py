"""The local configuration folder and its store of trusted package-signing keys.

The folder is ``$MEDGE_CONFIG_DIR`` if set (an appliance sets it to
``/etc/medge``), else ``$XDG_CONFIG_HOME/medge`` or ``~/.config/medge``.
Trusted public keys live in its ``trusted_keys/`` sub-folder, one PEM file a
key, named by key id. ``medge package verify`` without ``--trust`` and the
runtime check packages against these keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sdk.errors import KeyStoreError
from sdk.signing import PUBLIC_SUFFIX, key_id, load_public_key, public_key_pem

__all__ = ["TrustStore", "local_config_dir"]


def local_config_dir() -> Path:
    """The medge configuration folder of this machine or user."""
    explicit = os.environ.get("MEDGE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medge"


class TrustStore(Mapping[str, Ed25519PublicKey]):
    """Trusted Ed25519 public keys by key id (a read-only mapping, plus :meth:`add`).

    Raises:
        KeyStoreError: a file in the store is not a valid public key.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey], folder: Path | None = None) -> None:
        self._keys = dict(keys)
        self.folder = folder

    @classmethod
    def from_keys(cls, keys: Iterable[Ed25519PublicKey]) -> TrustStore:
        """A store holding exactly ``keys`` (for ``--trust PUBKEY``)."""
        return cls({key_id(key): key for key in keys})

    @classmethod
    def load(cls, folder: str | Path | None = None) -> TrustStore:
        """Read every ``*.pub`` in ``folder`` (default: the local config's ``trusted_keys``)."""
        folder = Path(folder) if folder is not None else local_config_dir() / "trusted_keys"
        keys: dict[str, Ed25519PublicKey] = {}
        if folder.is_dir():
            for path in sorted(folder.glob(f"*{PUBLIC_SUFFIX}")):
                key = load_public_key(path)
                keys[key_id(key)] = key
        return cls(keys, folder)

    def add(self, public_key_path: str | Path) -> str:
        """Copy a public key into the store's folder; return its key id."""
        if self.folder is None:
            raise KeyStoreError("this trust store has no folder to write to")
        key = load_public_key(public_key_path)
        ident = key_id(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{ident}{PUBLIC_SUFFIX}").write_bytes(public_key_pem(key))
        except OSError as exc:
            raise KeyStoreError(f"cannot write trusted key: {exc.strerror}", path=self.folder) from exc
        self._keys[ident] = key
        return ident

    def __getitem__(self, ident: str) -> Ed25519PublicKey:
        return self._keys[ident]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
