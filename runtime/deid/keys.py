"""The de-identification key: 32 random bytes in a file only its owner can read.

The key is what makes the new UIDs repeatable: the same key maps the same original UID to the same
new one, so a study exported in two batches, or exported again next month, still groups and its
references still resolve. Lose the key and later exports no longer link to earlier ones; leak it and
anyone holding original UIDs can test them against an export.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from runtime.deid.errors import DeidError
from sdk.durable_files import fsync_dir

__all__ = ["KEY_BYTES", "default_key_path", "load_key", "load_or_create_key"]

logger = logging.getLogger(__name__)

KEY_BYTES = 32


def default_key_path() -> Path:
    """Where ``medge deid`` keeps its key when none is given: ``deid.key`` in the medge config folder."""
    from sdk.trust import local_config_dir

    return local_config_dir() / "deid.key"


def load_key(path: Path) -> bytes:
    """Read a key file (hex text, as :func:`load_or_create_key` writes it).

    Raises:
        DeidError: the file cannot be read or does not hold a key of at least 16 bytes.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise DeidError(f"cannot read the de-identification key: {exc}", path=path) from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise DeidError("not a de-identification key (expected hex digits)", path=path) from exc
    if len(key) < 16:
        raise DeidError(f"the key has {len(key)} bytes, at least 16 are needed", path=path)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s can be read by other users (mode %o): chmod 600 it", path, stat.S_IMODE(mode))
    return key


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """The key in ``path``, made (mode 600) if the file does not exist yet.

    Returns:
        the key, and whether it was created now.

    Raises:
        DeidError: the file cannot be read or created.
    """
    if path.exists():
        return load_key(path), False
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(KEY_BYTES)
        # O_EXCL: two exports started at once must not each make (and use) a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_key(path), False
    except OSError as exc:
        raise DeidError(f"cannot create the de-identification key: {exc.strerror}", path=path) from exc
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(path.parent)
    return key, True
