"""MQTT topic names: ``medge/v1/{site}/{device}/{kind}``.

One builder and one parser, so no part of medge spells a topic by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from sdk.errors import ConfigError

__all__ = ["ROOT", "Topic", "TopicKind", "check_segment", "device_filter", "parse_topic", "topic"]

ROOT = "medge/v1"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TopicKind(StrEnum):
    """The message families and their direction."""

    FINDING = "finding"
    EVENT = "event"
    HEARTBEAT = "heartbeat"
    STATUS = "status"
    CMD = "cmd"
    CMD_RESULT = "cmd/result"
    ACK = "ack"


def check_segment(value: str, what: str) -> str:
    """Refuse a site or device name that would break topic structure or ACL patterns.

    Raises:
        ConfigError: empty, too long, or holding ``/``, ``+``, ``#`` or other characters.
    """
    if not _SEGMENT.match(value):
        raise ConfigError(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '.', '_' or '-', starting alphanumeric",
            field=what,
        )
    return value


def topic(site: str, device: str, kind: TopicKind | str) -> str:
    """The topic of one message family of one device."""
    kind = TopicKind(kind)
    return f"{ROOT}/{check_segment(site, 'site')}/{check_segment(device, 'device')}/{kind.value}"


def device_filter(site: str = "+", device: str = "+", kind: TopicKind | str | None = None) -> str:
    """A subscription filter; ``+`` for any site or device, no kind for every family."""
    site = site if site == "+" else check_segment(site, "site")
    device = device if device == "+" else check_segment(device, "device")
    tail = TopicKind(kind).value if kind is not None else "#"
    return f"{ROOT}/{site}/{device}/{tail}"


@dataclass(frozen=True)
class Topic:
    """A parsed topic."""

    site: str
    device: str
    kind: TopicKind


def parse_topic(name: str) -> Topic:
    """Split a medge topic into site, device and kind.

    Raises:
        ValueError: not a medge v1 topic.
    """
    prefix = ROOT + "/"
    if not name.startswith(prefix):
        raise ValueError(f"not a {ROOT} topic: {name!r}")
    parts = name[len(prefix) :].split("/", 2)
    if len(parts) != 3:
        raise ValueError(f"topic {name!r} lacks site, device or kind")
    site, device, kind = parts
    if not (_SEGMENT.match(site) and _SEGMENT.match(device)):
        raise ValueError(f"topic {name!r} has an invalid site or device")
    try:
        return Topic(site, device, TopicKind(kind))
    except ValueError:
        raise ValueError(f"topic {name!r} has unknown kind {kind!r}") from None
