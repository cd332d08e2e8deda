"""Device profiles: one TOML file per target board, their schema, loader and host detection.

A profile says which engine, execution providers or devices, precisions and
quantization scheme a board needs, and its memory, thread and batch limits.
``medge profiles detect`` (:func:`detect_host` + :func:`match_profile`) names
the profile that fits the machine it runs on::

    from device_profiles import detect_host, get_profile, list_profiles, match_profile

    detection = match_profile(detect_host(), list_profiles())
    profile = get_profile(detection.profile_id)
"""

from __future__ import annotations

import logging

from device_profiles.detect import Detection, HostFacts, detect_host, int8_expected_to_pay_off, match_profile
from device_profiles.loader import get_profile, list_profiles, load_profile, profiles_dir
from device_profiles.schema import (
    ONNXRUNTIME_PROVIDERS,
    OPENVINO_DEVICES,
    BatchLimits,
    DeviceProfile,
    Int8Hints,
    QuantizationScheme,
)

__all__ = [
    "ONNXRUNTIME_PROVIDERS",
    "OPENVINO_DEVICES",
    "BatchLimits",
    "Detection",
    "DeviceProfile",
    "HostFacts",
    "Int8Hints",
    "QuantizationScheme",
    "detect_host",
    "get_profile",
    "int8_expected_to_pay_off",
    "list_profiles",
    "load_profile",
    "match_profile",
    "profiles_dir",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
