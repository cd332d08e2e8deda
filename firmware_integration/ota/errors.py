"""The error of over-the-air updates."""

from __future__ import annotations

from pathlib import Path

from sdk.errors import MedgeError

__all__ = ["OtaError"]


class OtaError(MedgeError):
    """An update or key rotation cannot go on (bad request, busy, download, slot or key-store failure).

    Attributes:
        step: the update step that failed (``download``, ``verify``, ...), if any.
    """

    def __init__(
        self, message: str, *, step: str | None = None, path: str | Path | None = None, field: str | None = None
    ) -> None:
        self.step = step
        super().__init__(message, path=path, field=field)
