"""How a medge process reaches the MQTT broker: address, TLS material and credentials.

The appliance's ``[mqtt]`` section and the dashboard's both extend
:class:`BrokerConnection`, so the files are checked, read and turned into a
TLS context in one place (the reporter, the dashboard's ingest and
``medge selftest`` all connect with it).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdk.errors import ConfigError

__all__ = ["BrokerConnection"]


class BrokerConnection(BaseModel):
    """The broker's address, its CA (TLS), a client certificate (mutual TLS) or a username and password file."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8883, ge=1, le=65535)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.ca_file is not None

    @model_validator(mode="after")
    def _tls_files_fit(self) -> BrokerConnection:
        if (self.cert_file is not None or self.key_file is not None) and self.ca_file is None:
            raise ValueError("mqtt.cert_file/key_file need mqtt.ca_file (a client certificate only makes sense on TLS)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.cert_file and mqtt.key_file go together")
        return self

    def credentials_problem(self) -> str | None:
        """Why these settings are only fit for a demo (anonymous, or a username without its password), or None."""
        if self.username is None and self.cert_file is None:
            return "mqtt needs a username/password_file or a client certificate (anonymous is demo-only)"
        if self.username is not None and self.password_file is None:
            return "mqtt.username is set but mqtt.password_file is not"
        return None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client's TLS context (TLS 1.2+, the broker verified against ``ca_file``), or None without TLS.

        Raises:
            ConfigError: the CA (field ``mqtt.ca_file``) or the client certificate or key
                (``mqtt.cert_file``) cannot be loaded.
        """
        if self.ca_file is None:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the broker CA: {exc}", path=self.ca_file, field="mqtt.ca_file") from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            try:
                context.load_cert_chain(str(self.cert_file), None if self.key_file is None else str(self.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load the client certificate or key: {exc}", path=self.cert_file, field="mqtt.cert_file"
                ) from exc
        return context

    def password(self) -> str | None:
        """The password from ``password_file`` (its trailing newline dropped), or None without one.

        Raises:
            ConfigError: the file cannot be read (field ``mqtt.password_file``).
        """
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the broker password: {exc}", path=self.password_file, field="mqtt.password_file"
            ) from exc
