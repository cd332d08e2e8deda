"""Which of two model versions is newer (dotted numbers; a pre-release sorts before its release).

One order for everyone who compares them: the runtime (the newest version of a
model goes live), the appliance's update agent and the dashboard (a version
must go up unless an admin forces it).
"""

from __future__ import annotations

__all__ = ["version_key"]


def version_key(version: str) -> tuple[tuple[int, ...], int, str]:
    """A sort key: ``1.10.0`` > ``1.9.2`` > ``1.9.2-rc1``; build metadata (``+...``) is ignored."""
    core, _, pre = version.split("+", 1)[0].partition("-")
    numbers = [int(part) if part.isdigit() else 0 for part in core.split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:  # 1.2 == 1.2.0
        numbers.pop()
    return tuple(numbers), 0 if pre else 1, pre
