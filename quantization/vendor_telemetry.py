"""Keeping vendor toolchains quiet: no usage telemetry leaves a hospital's or device maker's network.

``openvino.convert_model`` and NNCF send usage events to the vendor unless
the user declined, and treat a *missing* consent file as consent. medge
records "declined" through OpenVINO's own opt-in API the first time it
drives those tools, unless the user already made a choice, which it keeps.
"""

from __future__ import annotations

import logging
import os

__all__ = ["decline_vendor_telemetry"]

log = logging.getLogger(__name__)


def decline_vendor_telemetry() -> None:
    """Record OpenVINO/NNCF telemetry as declined where no choice was made yet (best effort)."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # OpenVINO not installed: nothing to decline
        return
    checker = OptInChecker()
    base, sub = checker.consent_file_base_dir(), checker.consent_file_subdirectory()
    if base is None or sub is None or os.path.exists(checker.consent_file()):
        return
    if checker.update_result(ConsentCheckResult.DECLINED):
        log.info("declined OpenVINO/NNCF usage telemetry in %s", checker.consent_file())
    else:
        log.warning("could not record the OpenVINO telemetry opt-out at %s", checker.consent_file())
