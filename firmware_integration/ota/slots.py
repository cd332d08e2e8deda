"""The A/B package slots: two folders, and a symlink that makes one of them the runtime's packages folder.

::

    {state}/packages -> slots/A      the runtime's [packages] dir: a symlink to the active slot
    {state}/slots/A/                 the live packages
    {state}/slots/B/                 the next update is installed here; after it, the rollback target

The switch is one ``rename(2)`` of a new symlink over the old one, so after a
kill or a power cut the packages folder is either the old slot or the new
one, never a mix. A plain packages folder (an appliance provisioned before
over-the-air updates) becomes slot A on first use; a kill half-way through
that conversion is completed by the next :meth:`Slots.ensure`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

from firmware_integration.ota.errors import OtaError
from sdk.durable_files import copy_durably, fsync_dir, replace_symlink

__all__ = ["SLOT_NAMES", "Slots", "package_model_name"]

log = logging.getLogger(__name__)

SLOT_NAMES = ("A", "B")
_SLOT_MODE = 0o750


def package_model_name(path: Path) -> str | None:
    """The model name in a package's manifest, read without loading the whole file; None if unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
        name = manifest["model"]["name"]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None
    return name if isinstance(name, str) else None


class Slots:
    """The two package slots and the symlink that selects the live one.

    Args:
        packages_dir: the runtime's ``[packages] dir`` (becomes a symlink).
        slots_dir: where the slot folders ``A`` and ``B`` live (same file system).

    Raises:
        OtaError: the packages folder points somewhere else than a slot, or cannot be converted.
    """

    def __init__(self, packages_dir: Path, slots_dir: Path) -> None:
        self.packages_dir = Path(packages_dir)
        self.slots_dir = Path(slots_dir)

    def path(self, slot: str) -> Path:
        if slot not in SLOT_NAMES:
            raise OtaError(f"no slot {slot!r} (slots are {', '.join(SLOT_NAMES)})")
        return self.slots_dir / slot

    def _link_target(self, slot: str) -> str:
        return os.path.relpath(self.path(slot), self.packages_dir.parent)

    def ensure(self) -> str:
        """Make the slots consistent (convert a plain folder, finish a half-done conversion); return the active slot."""
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        self.packages_dir.with_name(f".{self.packages_dir.name}.new").unlink(missing_ok=True)
        first = self.path(SLOT_NAMES[0])
        if self.packages_dir.is_symlink():
            active = self.active()
        elif self.packages_dir.is_dir():
            # A plain folder is the truth: whatever is in slot A is left over from something else.
            if first.exists():
                shutil.rmtree(first)
            try:
                os.rename(self.packages_dir, first)
            except OSError as exc:
                hint = " (it must be on the same file system as the slots)" if exc.errno == errno.EXDEV else ""
                raise OtaError(
                    f"cannot turn the packages folder into slot A: {exc.strerror}{hint}", path=self.packages_dir
                ) from exc
            fsync_dir(self.slots_dir)
            fsync_dir(self.packages_dir.parent)
            replace_symlink(self.packages_dir, self._link_target(SLOT_NAMES[0]))
            log.info("packages folder %s converted into slot A", self.packages_dir)
            active = SLOT_NAMES[0]
        else:
            # Missing: a conversion was killed between its rename and its symlink (or a fresh state).
            first.mkdir(mode=_SLOT_MODE, exist_ok=True)
            replace_symlink(self.packages_dir, self._link_target(SLOT_NAMES[0]))
            active = SLOT_NAMES[0]
        for slot in SLOT_NAMES:
            self.path(slot).mkdir(mode=_SLOT_MODE, exist_ok=True)
            for leftover in self.path(slot).glob(".*.tmp-*"):  # a copy killed before its rename
                with contextlib.suppress(OSError):
                    leftover.unlink()
        return active

    def active(self) -> str:
        """The slot the packages folder points at.

        Raises:
            OtaError: it is not a symlink to one of the slots.
        """
        try:
            target = os.readlink(self.packages_dir)
        except OSError as exc:
            raise OtaError(
                f"the packages folder is not a slot symlink: {exc.strerror}", path=self.packages_dir
            ) from exc
        resolved = Path(os.path.normpath(self.packages_dir.parent / target))
        for slot in SLOT_NAMES:
            if resolved == Path(os.path.normpath(self.path(slot))):
                return slot
        raise OtaError(f"the packages folder points at {target}, not at a slot of {self.slots_dir}")

    def other(self, slot: str) -> str:
        """The slot that is not ``slot``."""
        return SLOT_NAMES[1] if slot == SLOT_NAMES[0] else SLOT_NAMES[0]

    def activate(self, slot: str) -> None:
        """Make ``slot`` the packages folder (atomic, durable)."""
        replace_symlink(self.packages_dir, self._link_target(slot))
        log.info("packages folder now slot %s", slot)

    def empty(self, slot: str) -> None:
        """Remove everything in a slot (never the active one)."""
        if self.packages_dir.is_symlink() and self.active() == slot:
            raise OtaError(f"slot {slot} is live; it cannot be emptied")
        folder = self.path(slot)
        folder.mkdir(mode=_SLOT_MODE, exist_ok=True)
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        fsync_dir(folder)

    def prepare(self, slot: str, source_slot: str, *, replacing: str) -> list[str]:
        """Empty ``slot`` and fill it with the packages of ``source_slot`` except every version of ``replacing``.

        Files are hard links where the file system allows (no second copy of
        a large package), copies otherwise.

        Returns:
            The file names carried over.
        """
        self.empty(slot)
        target = self.path(slot)
        carried = []
        for package in sorted(self.path(source_slot).glob("*.medge")):
            if package_model_name(package) == replacing:
                continue
            try:
                os.link(package, target / package.name)
            except OSError:
                copy_durably(package, target / package.name)
            carried.append(package.name)
        fsync_dir(target)
        return carried

    def install(self, slot: str, package: Path, file_name: str) -> Path:
        """Copy a package into a slot under ``file_name`` (temp name, fsync, rename)."""
        destination = self.path(slot) / file_name
        copy_durably(package, destination)
        return destination
