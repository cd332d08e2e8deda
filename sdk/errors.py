"""The one exception root of medge and its families.

Every error medge raises on purpose derives from :class:`MedgeError`; the
families are grouped by what the caller can do about them::

    MedgeError
    ├── ConfigError              a TOML/JSON file or a setting is wrong: fix the file
    │   └── ProfileError         a device profile is missing or malformed
    ├── PackageError             a model package cannot be used
    │   ├── PackageFormatError   not a package, unknown format version, bad manifest
    │   └── VerificationError    signature, key or hash check failed: do not run it
    ├── DicomInputError          a DICOM instance cannot be used (corrupt, unsupported)
    ├── PreprocessingError       an instance cannot be turned into a model input
    ├── EngineError              an inference engine failed to load or run
    ├── KeyStoreError            signing keys missing or unreadable
    ├── MessageError             (sdk.messages) an MQTT message does not match its schema
    ├── ModelCheckError          (quantization.errors) the ONNX model cannot run on the profile's engine
    ├── CalibrationError         (quantization.errors) too few usable calibration instances
    ├── QuantizationGateError    (quantization.errors) no setting passes the accuracy gate
    ├── SpoolError               (runtime.spool) the spool cannot store, move or remove a file
    ├── WorkQueueError           (runtime.work_queue) a state transition the queue does not allow
    ├── BrokerError              (firmware_integration.broker) the broker's files or process cannot be managed
    ├── OtaError                 (firmware_integration.ota) an update or key rotation cannot go on
    ├── ProvisionError           (firmware_integration.provisioning) a provisioning step failed
    ├── DeidError                (runtime.deid) a file cannot be de-identified, or the export's options are wrong
    │   └── BurnedInAnnotationError  the image may carry burned-in text: refused unless allowed
    ├── BrokerConnectionError    (runtime.reporting) the MQTT broker cannot be reached or refused the device
    ├── StoreError               (dashboard.store) the dashboard's database cannot be opened or migrated
    ├── StoreUnavailable         (dashboard.ingest) the database cannot take a batch now: retry, acknowledge nothing
    ├── AuthError                (dashboard.errors) not logged in, throttled, not permitted, bad CSRF token
    ├── AccountError             (dashboard.errors) a user or token cannot be created or changed
    ├── NotFoundError            (dashboard.errors) no such finding, device or user
    ├── TransitionError          (dashboard.errors) a finding's state does not allow that action
    └── AuditChainError          (dashboard.errors) the audit log's hash chain is broken

Each error carries the context a user needs (the file, the field, the check)
so that the CLI can print it without a traceback. Third-party exceptions are
translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "DicomInputError",
    "EngineError",
    "KeyStoreError",
    "MedgeError",
    "PackageError",
    "PackageFormatError",
    "PreprocessingError",
    "ProfileError",
    "VerificationError",
]


class MedgeError(Exception):
    """Root of every error medge raises on purpose.

    Args:
        message: what went wrong, in words a user can act on.
        path: the file concerned, if any.
        field: the dotted field path inside that file, if any.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{': '.join(where)}: {self.message}" if where else self.message


class ConfigError(MedgeError):
    """A configuration file or setting is invalid."""


class ProfileError(ConfigError):
    """A device profile is unknown, unreadable or malformed."""


class PackageError(MedgeError):
    """A model package cannot be used."""


class PackageFormatError(PackageError):
    """The file is not a medge package, or its format version or manifest is wrong."""


class VerificationError(PackageError):
    """A package failed a signature, key or content-hash check.

    Attributes:
        check: the name of the check that failed (``signature``, ``hash``,
            ``key``, ``archive``, ``files``).
    """

    def __init__(self, message: str, *, check: str, path: str | Path | None = None, field: str | None = None) -> None:
        self.check = check
        super().__init__(message, path=path, field=field)


class DicomInputError(MedgeError):
    """A DICOM instance is corrupt, truncated, hostile or unsupported."""


class PreprocessingError(MedgeError):
    """A dataset cannot be turned into a model input under the given spec."""


class EngineError(MedgeError):
    """An inference engine failed to load or run a model."""


class KeyStoreError(MedgeError):
    """A signing key or the trust store is missing or unreadable."""
