"""Finding and loading device profiles: the shipped TOML files, or any file given.

Profiles are read from disk on every call (there are a handful of small
files), so there is no module-level cache for tests to reset.
"""

from __future__ import annotations

import logging
from pathlib import Path

from device_profiles.schema import DeviceProfile
from sdk.config_files import load_toml_model
from sdk.errors import ProfileError

__all__ = ["get_profile", "list_profiles", "load_profile", "profiles_dir"]

log = logging.getLogger(__name__)


def profiles_dir() -> Path:
    """The folder of the profiles shipped with medge (``device_profiles/*.toml``)."""
    return Path(__file__).resolve().parent


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and validate one profile file.

    Raises:
        ProfileError: the file is missing or not TOML, a field is invalid, or
            its ``id`` differs from the file name (the id is how packages and
            appliances refer to it, so the two must not drift apart).
    """
    path = Path(path)
    profile = load_toml_model(path, DeviceProfile, "device profile", error=ProfileError)
    if profile.id != path.stem:
        raise ProfileError(f"id {profile.id!r} does not match the file name {path.name!r}", path=path, field="id")
    log.debug("loaded device profile %s from %s", profile.id, path)
    return profile


def _profile_paths(directory: Path) -> list[Path]:
    return sorted(path for path in directory.glob("*.toml") if path.is_file())


def list_profiles(directory: str | Path | None = None) -> list[DeviceProfile]:
    """Every profile in ``directory`` (default: the shipped ones), sorted by id.

    Raises:
        ProfileError: one of the files is malformed (a broken profile is not skipped quietly).
    """
    folder = Path(directory) if directory is not None else profiles_dir()
    return [load_profile(path) for path in _profile_paths(folder)]


def get_profile(profile_id: str, directory: str | Path | None = None) -> DeviceProfile:
    """The profile called ``profile_id`` in ``directory`` (default: the shipped ones).

    Raises:
        ProfileError: no such profile (the message lists the known ids), or it is malformed.
    """
    folder = Path(directory) if directory is not None else profiles_dir()
    path = folder / f"{profile_id}.toml"
    known = [candidate.stem for candidate in _profile_paths(folder)]
    if profile_id not in known:
        raise ProfileError(f"unknown device profile {profile_id!r}; known profiles: {', '.join(known) or 'none'}")
    return load_profile(path)
