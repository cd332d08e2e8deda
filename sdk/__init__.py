"""medge SDK: the public facade.

Everything a device maker needs is importable from here (``from sdk import
verify_package, preprocess``); the modules behind it are implementation and
may move. Names load lazily, so ``import sdk`` stays cheap on an appliance.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # errors
    "MedgeError": "sdk.errors",
    "ConfigError": "sdk.errors",
    "ProfileError": "sdk.errors",
    "PackageError": "sdk.errors",
    "PackageFormatError": "sdk.errors",
    "VerificationError": "sdk.errors",
    "DicomInputError": "sdk.errors",
    "PreprocessingError": "sdk.errors",
    "EngineError": "sdk.errors",
    "KeyStoreError": "sdk.errors",
    # model config and preprocessing
    "ModelConfig": "sdk.model_config",
    "load_model_config": "sdk.model_config",
    "PreprocessSpec": "sdk.preprocess_spec",
    "preprocess": "sdk.preprocessing",
    "check_input": "sdk.preprocessing",
    # packages and keys
    "Manifest": "sdk.manifest",
    "ModelPackage": "sdk.package",
    "open_package": "sdk.package",
    "verify_package": "sdk.package",
    "check_package": "sdk.package",
    "write_package": "sdk.package",
    "generate_keypair": "sdk.signing",
    "load_private_key": "sdk.signing",
    "load_public_key": "sdk.signing",
    "TrustStore": "sdk.trust",
    # messages, topics, appliance config
    "Finding": "sdk.messages",
    "Event": "sdk.messages",
    "Heartbeat": "sdk.messages",
    "Status": "sdk.messages",
    "parse_message": "sdk.messages",
    "topic": "sdk.topics",
    "TopicKind": "sdk.topics",
    "ApplianceConfig": "sdk.appliance_config",
    "load_appliance_config": "sdk.appliance_config",
}

__all__ = [
    "ApplianceConfig",
    "ConfigError",
    "DicomInputError",
    "EngineError",
    "Event",
    "Finding",
    "Heartbeat",
    "KeyStoreError",
    "Manifest",
    "MedgeError",
    "ModelConfig",
    "ModelPackage",
    "PackageError",
    "PackageFormatError",
    "PreprocessSpec",
    "PreprocessingError",
    "ProfileError",
    "Status",
    "TopicKind",
    "TrustStore",
    "VerificationError",
    "check_input",
    "check_package",
    "generate_keypair",
    "load_appliance_config",
    "load_model_config",
    "load_private_key",
    "load_public_key",
    "open_package",
    "parse_message",
    "preprocess",
    "topic",
    "verify_package",
    "write_package",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from sdk.appliance_config import ApplianceConfig, load_appliance_config
    from sdk.errors import (
        ConfigError,
        DicomInputError,
        EngineError,
        KeyStoreError,
        MedgeError,
        PackageError,
        PackageFormatError,
        PreprocessingError,
        ProfileError,
        VerificationError,
    )
    from sdk.manifest import Manifest
    from sdk.messages import Event, Finding, Heartbeat, Status, parse_message
    from sdk.model_config import ModelConfig, load_model_config
    from sdk.package import ModelPackage, check_package, open_package, verify_package, write_package
    from sdk.preprocess_spec import PreprocessSpec
    from sdk.preprocessing import check_input, preprocess
    from sdk.signing import generate_keypair, load_private_key, load_public_key
    from sdk.topics import TopicKind, topic
    from sdk.trust import TrustStore
