"""What an appliance and the dashboard exchange outside MQTT: enrollment, package offers, over-the-air updates.

Enrollment (HTTPS, once, at provisioning)::

    POST {dashboard}/api/v1/enroll          EnrollmentRequest  →  EnrollmentResponse
         the single-use token is the only credential; the device sends a CSR of
         the key pair it made itself, its private key never leaves it.

Package download (HTTPS, resumable)::

    GET  {dashboard}{PackageOffer.url}      Authorization: Bearer {device token}
         Range: bytes=N-  answers 206 with the rest of the file (a download cut
         off part-way continues where it stopped).

Over-the-air update (MQTT ``cmd``, see :class:`sdk.messages.Command`)::

    command "update"       args = UpdateRequest   → the device answers at once (accepted / refused) and
                                                    reports every step as an ``ota`` event (:class:`OtaReport`)
    command "rotate-keys"  args = KeyRotation     → answered when the key store has changed (or not, and why)

A device decides for itself: it installs only what its own trusted keys
verify, refuses a version that does not go up unless the update is forced
(an admin's decision, recorded on the dashboard), and rolls back by itself.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from sdk.signing import key_id, sign, signature_valid

__all__ = [
    "DEVICE_TOKEN_HEADER",
    "OTA_EVENT",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "KeyRotation",
    "MqttGrant",
    "OtaReport",
    "OtaStep",
    "PackageOffer",
    "UpdateRequest",
    "endorse_keys",
]

_SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_SHA256 = r"^[0-9a-f]{64}$"

DEVICE_TOKEN_HEADER = "Authorization"
"""A device authenticates to the dashboard's device API with ``Authorization: Bearer <device token>``."""

OTA_EVENT = "ota"
"""The event kind of every over-the-air update step (detail: :class:`OtaReport`)."""


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackageOffer(_Contract):
    """A signed model package the dashboard offers a device, and where to fetch it."""

    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=_SHA256, description="sha256 of the whole .medge file")
    size: int = Field(ge=1, description="bytes of the .medge file")
    url: str = Field(
        pattern=r"^/", description="path on the dashboard (joined to the device's dashboard URL), e.g. /api/v1/..."
    )


class EnrollmentRequest(_Contract):
    """Appliance → dashboard at provisioning."""

    token: str = Field(min_length=16, max_length=256)
    site: str = Field(pattern=_SEGMENT)
    device: str = Field(pattern=_SEGMENT)
    csr_pem: str = Field(description="PEM CSR of the device's own key pair, subject CN = '{site}/{device}'")
    profile: str | None = Field(default=None, description="the device profile the appliance detected")
    medge_version: str = ""


class MqttGrant(_Contract):
    """How the new device reaches the broker: a password, or a certificate issued for its CSR."""

    host: str
    port: int = Field(ge=1, le=65535)
    username: str | None = Field(default=None, description="set with password auth")
    password: str | None = Field(default=None, repr=False)
    ca_cert_pem: str | None = Field(default=None, description="the CA that signed the broker's certificate (TLS)")
    cert_pem: str | None = Field(default=None, description="the device's client certificate (certificate auth)")


class EnrollmentResponse(_Contract):
    """Dashboard → appliance: everything it needs to go to work."""

    schema_: Literal["medge.enrollment/1"] = Field("medge.enrollment/1", alias="schema")
    site: str = Field(pattern=_SEGMENT)
    device: str = Field(pattern=_SEGMENT)
    device_token: str = Field(min_length=16, repr=False, description="bearer token of the device API (downloads)")
    mqtt: MqttGrant
    trusted_keys: list[str] = Field(min_length=1, description="PEM Ed25519 public keys packages must be signed with")
    package: PackageOffer | None = Field(default=None, description="the package assigned to the device, if any")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class UpdateRequest(_Contract):
    """The ``args`` of an ``update`` command."""

    update_id: str = Field(min_length=1, max_length=128, description="the dashboard's id of this rollout")
    package: PackageOffer
    force: bool = Field(default=False, description="allow a version that does not go up (an admin's decision)")
    probation_s: float = Field(default=300.0, ge=0, le=86_400, description="how long the new package is watched")


class OtaStep(StrEnum):
    """The steps an update goes through, in order; the last three end it."""

    ACCEPTED = "accepted"
    DOWNLOAD = "download"
    VERIFY = "verify"
    INSTALL = "install"
    GOLDEN = "golden"
    SWITCH = "switch"
    PROBATION = "probation"
    DONE = "done"
    """the new package is live and passed probation."""
    ROLLED_BACK = "rolled-back"
    """a step failed after the switch, or health regressed on probation: the previous packages are live again."""
    REFUSED = "refused"
    """a check failed before anything changed (signature, hash, version, space): nothing changed."""


class OtaReport(_Contract):
    """The detail of one ``ota`` event."""

    update_id: str
    step: OtaStep
    ok: bool = True
    package: str = Field(description="'{name} {version}'")
    reason: str | None = None
    progress: float | None = Field(default=None, ge=0, le=1, description="download fraction")


class KeyRotation(_Contract):
    """The ``args`` of a ``rotate-keys`` command: keys to add and key ids to retire, endorsed by a trusted key.

    The endorsement is an Ed25519 signature, by a key the device trusts now,
    over :meth:`signed_bytes`; it is made offline by whoever holds that key
    (``medge keys endorse``), so a dashboard cannot make a device trust a key
    on its own. A device never retires its last key.
    """

    add: list[str] = Field(default=[], description="PEM Ed25519 public keys to trust")
    retire: list[str] = Field(default=[], description="key ids to stop trusting")
    issued: datetime
    signer: str = Field(description="key id of the endorsing key")
    signature: str = Field(description="base64 Ed25519 signature over signed_bytes()")

    def signed_bytes(self) -> bytes:
        body = {"add": self.add, "retire": self.retire, "issued": self.issued.isoformat(), "signer": self.signer}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def endorsed_by(self, public_key: Ed25519PublicKey) -> bool:
        """True when ``public_key`` is the signer and the signature holds."""
        if key_id(public_key) != self.signer:
            return False
        try:
            signature = base64.b64decode(self.signature, validate=True)
        except ValueError:
            return False
        return signature_valid(public_key, signature, self.signed_bytes())


def endorse_keys(
    private_key: Ed25519PrivateKey, add: list[str], retire: list[str], *, issued: datetime | None = None
) -> KeyRotation:
    """A :class:`KeyRotation` signed by ``private_key`` (a key the devices trust now)."""
    unsigned = KeyRotation(
        add=add,
        retire=retire,
        issued=issued or datetime.now(UTC),
        signer=key_id(private_key.public_key()),
        signature="",
    )
    signature = base64.b64encode(sign(private_key, unsigned.signed_bytes())).decode()
    return unsigned.model_copy(update={"signature": signature})
