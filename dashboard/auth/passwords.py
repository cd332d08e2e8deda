"""Salted, slow password hashes (scrypt) and their verification.

scrypt with N=2^15, r=8, p=3 (32 MiB, ~0.3 s here) is one of OWASP's
equivalent scrypt settings; it is memory-hard, so a GPU farm gains little.
The parameters are stored in each hash (``scrypt$N$r$p$salt$hash``), so they
can be raised later and old hashes still verify (:func:`needs_rehash` says
which to replace at the next login).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["MIN_PASSWORD_LENGTH", "hash_password", "needs_rehash", "verify_password"]

MIN_PASSWORD_LENGTH = 10
"""Shorter passwords are refused when a user is created."""

_N, _R, _P = 2**15, 8, 3
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAXMEM = 128 * 1024 * 1024
_SCHEME = "scrypt"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=length)


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password``, in the self-describing form stored in ``users``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _derive(password, salt, _N, _R, _P, _KEY_BYTES)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(key, validate=True)
        derived = _derive(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p), len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(derived, expected)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with weaker parameters than today's."""
    try:
        scheme, n, r, p, *_ = stored.split("$")
        return scheme != _SCHEME or (int(n), int(r), int(p)) != (_N, _R, _P)
    except ValueError:
        return True
