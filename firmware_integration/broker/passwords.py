"""Mosquitto's password file, written by Python in the broker's own ``$7$`` format.

Mosquitto 2.0 stores ``username:$7$<iterations>$<base64 salt>$<base64 hash>``
with PBKDF2-HMAC-SHA512, a 12-byte salt and 101 iterations (what
``mosquitto_passwd`` writes). Writing it here means provisioning does not
depend on the ``mosquitto_passwd`` binary being on the machine that runs
``medge broker``. medge generates 256-bit random passwords, so the low
iteration count mosquitto uses does not make them guessable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from pathlib import Path

from sdk.errors import ConfigError

__all__ = ["PasswordFile", "check_password", "generate_password", "hash_password"]

ITERATIONS = 101
SALT_BYTES = 12
_HASH_BYTES = 64  # SHA-512


def generate_password() -> str:
    """A new random password (256 bits, URL-safe characters: no ``:`` or newline)."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The ``$7$`` hash mosquitto 2.0 checks ``password`` against.

    Raises:
        ConfigError: the password is empty or holds a line break (it could not be read back from a file).
    """
    if not password or "\n" in password or "\r" in password:
        raise ConfigError("a broker password must be non-empty and hold no line break", field="password")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` entry (constant-time comparison)."""
    try:
        _, kind, iterations, salt_b64, digest_b64 = encoded.split("$")
        if kind != "7":
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
        rounds = int(iterations)
    except (ValueError, binascii.Error):
        return False
    actual = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds, len(expected))
    return hmac.compare_digest(actual, expected)


class PasswordFile:
    """The entries of a mosquitto password file, kept in order; lines medge did not write are kept as they are.

    Args:
        text: the file's current content ("" for a new file).
    """

    def __init__(self, text: str = "") -> None:
        self._entries: dict[str, str] = {}
        for line in text.splitlines():
            username, sep, encoded = line.partition(":")
            if sep and username:
                self._entries[username] = encoded

    @classmethod
    def read(cls, path: Path) -> PasswordFile:
        """Load a password file; a missing file is an empty one."""
        try:
            return cls(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()

    def __contains__(self, username: object) -> bool:
        return username in self._entries

    def usernames(self) -> list[str]:
        """The usernames present, in file order."""
        return list(self._entries)

    def set(self, username: str, password: str) -> None:
        """Add or replace ``username`` with a fresh salted hash of ``password``."""
        if ":" in username or "\n" in username:
            raise ConfigError(f"username {username!r} cannot hold ':' or a line break", field="username")
        self._entries[username] = hash_password(password)

    def check(self, username: str, password: str) -> bool:
        """Whether ``username`` is present with ``password``."""
        encoded = self._entries.get(username)
        return encoded is not None and check_password(password, encoded)

    def remove(self, username: str) -> bool:
        """Drop ``username``; whether it was present."""
        return self._entries.pop(username, None) is not None

    def render(self) -> bytes:
        """The file content."""
        return "".join(f"{username}:{encoded}\n" for username, encoded in self._entries.items()).encode()
