"""Over-the-air model updates on the appliance: A/B package slots, resumable downloads, rollback, key rotation.

The dashboard sends ``update`` (a :class:`~sdk.fleet_contracts.UpdateRequest`);
the appliance downloads the package over HTTPS, verifies it against its own
trusted keys, installs it into the inactive slot, runs its golden samples,
switches the packages symlink atomically and watches the new package on
probation, rolling back by itself if anything fails. ``rotate-keys``
changes the trusted keys on the word of a key trusted now. Wiring::

    from firmware_integration.ota import OtaAgent, OtaPaths

    agent = OtaAgent(config, paths=OtaPaths.from_layout(layout))
    agent.recover()                                  # before the packages load: undo a killed update
    appliance = Appliance(config, commands=agent.commands())
    appliance.start()
    agent.start(appliance, emit)

docs/ota.md explains the flow, the slots on disk and the rollback rules.
"""

from firmware_integration.ota.agent import ApplianceHandle, OtaAgent, OtaPaths
from firmware_integration.ota.download import PackageDownload, download_client
from firmware_integration.ota.errors import OtaError
from firmware_integration.ota.journal import Journal, JournalEntry
from firmware_integration.ota.keys import RotationResult, rotate_keys
from firmware_integration.ota.slots import SLOT_NAMES, Slots

__all__ = [
    "SLOT_NAMES",
    "ApplianceHandle",
    "Journal",
    "JournalEntry",
    "OtaAgent",
    "OtaError",
    "OtaPaths",
    "PackageDownload",
    "RotationResult",
    "Slots",
    "download_client",
    "rotate_keys",
]
