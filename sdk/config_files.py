"""Reading TOML config files into pydantic models, with errors that name file and field.

Every config medge reads (model config, device profile, appliance and
dashboard settings) goes through :func:`load_toml_model`, so a bad file always
fails the same way: a :class:`~sdk.errors.ConfigError` naming the file, the
dotted field path and pydantic's reason.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from sdk.errors import ConfigError, MedgeError

__all__ = ["FileSettings", "config_error_from_validation", "load_toml_model", "read_toml"]

ModelT = TypeVar("ModelT", bound=BaseModel)
ErrorT = TypeVar("ErrorT", bound=MedgeError)


def read_toml(path: str | Path, what: str, *, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """Parse a TOML file, translating I/O and syntax errors into ``error``."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{what} not found", path=path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what}: {exc}", path=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} is not valid TOML: {exc}", path=path) from exc


def config_error_from_validation(
    exc: ValidationError,
    path: str | Path | None,
    *,
    error: type[ErrorT] = ConfigError,  # type: ignore[assignment]
) -> ErrorT:
    """Turn pydantic's first error into ``error`` naming the file and the dotted field."""
    problems = exc.errors()
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    return error(f"{message}{more}", path=path, field=field)


def load_toml_model(
    path: str | Path, model: type[ModelT], what: str, *, error: type[ConfigError] = ConfigError
) -> ModelT:
    """Read ``path`` as TOML and validate it as ``model``.

    The model is constructed (not ``model_validate``d), so a pydantic-settings
    model also applies its environment overrides.

    Raises:
        ConfigError: (or the ``error`` subclass given) the file is missing,
            not TOML, or a field is invalid.
    """
    data = read_toml(path, what, error=error)
    try:
        return model(**data)
    except ValidationError as exc:
        raise config_error_from_validation(exc, path, error=error) from exc


class FileSettings(BaseSettings):
    """Settings read from a TOML file (:func:`load_toml_model`) where the environment wins over the file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)
