"""The systemd side of an appliance image: units for the runtime and the dashboard, users and folders.

``medge-runtime.service`` runs ``medge serve`` as ``Type=notify`` with a
watchdog (the runtime pings only while it makes progress), restarts it on
failure within a start limit, and sandboxes it: a dedicated user, a read-only
system but for the layout's state, log and runtime folders, no capabilities
(``CAP_NET_BIND_SERVICE`` only for a DICOM port below 1024), no devices but
the accelerator's. ``medge-dashboard.service`` does the same for
``medge dashboard``. The ``sysusers.d`` and ``tmpfiles.d`` snippets create
the users and the :class:`~firmware_integration.layout.Layout`'s folders::

    from firmware_integration.layout import Layout
    from firmware_integration.systemd import UnitOptions, install_units

    install_units(Layout(), UnitOptions(accelerator="nvidia-gpu"), root="/srv/image-root")

docs/appliance-image.md walks through an image build on Debian, Ubuntu and Jetson Linux.
"""

from firmware_integration.systemd.units import (
    DASHBOARD_UNIT,
    RUNTIME_UNIT,
    AcceleratorKind,
    UnitOptions,
    install_units,
    render_units,
)

__all__ = ["DASHBOARD_UNIT", "RUNTIME_UNIT", "AcceleratorKind", "UnitOptions", "install_units", "render_units"]
