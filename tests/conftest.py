"""Fixtures shared across the suite: a signing key, a calibration set, FP32 reference packages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_profiles import get_profile
from quantization.compile import CompileOptions, compile_package
from sdk.model_config import load_model_config
from sdk.reference_model import config_path, onnx_path
from sdk.signing import KeyPair, generate_keypair, load_private_key, load_public_key
from sdk.testing import PhantomSpec, generate_studies
from sdk.trust import TrustStore


@dataclass(frozen=True)
class ReferencePackages:
    """Makes signed FP32 packages of the reference model (fast: no quantization)."""

    pair: KeyPair
    key: Ed25519PrivateKey
    trusted: TrustStore
    calibration: Path

    def build(self, out: Path, profile_id: str = "generic-x86_64-cpu") -> Path:
        compile_package(
            onnx_path(),
            load_model_config(config_path()),
            get_profile(profile_id),
            self.calibration,
            self.key,
            out,
            CompileOptions(precision="fp32"),
        )
        return out


@pytest.fixture(scope="session")
def reference_packages(tmp_path_factory: pytest.TempPathFactory) -> ReferencePackages:
    root = tmp_path_factory.mktemp("reference-packages")
    generate_studies(root / "calib", 3, PhantomSpec(slices=12), seed=21)
    pair = generate_keypair(root / "keys")
    return ReferencePackages(
        pair,
        load_private_key(pair.private_path),
        TrustStore.from_keys([load_public_key(pair.public_path)]),
        root / "calib",
    )
