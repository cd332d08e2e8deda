"""The errors of de-identification: what the caller can do differs, so they are two classes."""

from __future__ import annotations

from sdk.errors import MedgeError

__all__ = ["BurnedInAnnotationError", "DeidError"]


class DeidError(MedgeError):
    """A file cannot be de-identified or written, or the export's options, key or folders are wrong."""


class BurnedInAnnotationError(DeidError):
    """The image has (or probably has) identifying text burned into its pixels, which medge does not scrub.

    Attributes:
        reason: why the image was judged to carry burned-in text.
    """

    def __init__(self, reason: str, *, path: str | None = None) -> None:
        self.reason = reason
        super().__init__(
            f"refused: {reason} (pixel data is not scrubbed; --allow-burned-in writes it anyway)", path=path
        )
