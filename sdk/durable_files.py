"""Writes that survive a kill or a power cut at any moment: temp file, fsync, rename, fsync the folder.

The spool, packages, the update agent's slots and journal, provisioning and
the self-test all make their files durable through these.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["copy_durably", "fsync_dir", "replace_symlink", "write_atomic"]


def fsync_dir(folder: Path) -> None:
    """Make the entries of a folder (a rename, a new or removed file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o640, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data``: readers see the old content or the new one, never half of it.

    ``mode`` is set exactly (whatever the umask); ``owner`` (uid, gid) is given to the file before it
    appears under its name, so it is never readable by the wrong user.
    """
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def copy_durably(source: Path, target: Path) -> None:
    """Copy a file under a temporary name, fsync it and rename it to ``target``."""
    tmp = _temp_name(target)
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def replace_symlink(link: Path, target: str) -> None:
    """Point the symlink ``link`` at ``target`` in one atomic step (a new link renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)
