"""What the store keeps instead of a bearer secret (session, API, enrollment and device tokens).

The secrets are 256 random bits, so a plain SHA-256 is enough: nothing to
guess, no salt or slow hash needed (those are for passwords:
:mod:`dashboard.auth.passwords`). Lookups compare digests, never secrets.
"""

from __future__ import annotations

import hashlib

__all__ = ["secret_digest"]


def secret_digest(secret: str) -> str:
    """The hex SHA-256 of a token secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()
