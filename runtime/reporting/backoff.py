"""How long to wait before the next connection attempt: exponential back-off with jitter.

A fleet of appliances that lost the same broker must not come back at the
same instant, and one appliance must not hammer a broker that refuses it.
The delay doubles per failed attempt up to a cap, and a random share of it
is taken away, so that delays still grow (the shortest delay of attempt
``n + 1`` is the longest of attempt ``n``) but are spread out.
"""

from __future__ import annotations

import random

from sdk.errors import ConfigError

__all__ = ["Backoff"]

_MAX_EXPONENT = 64  # 2**64 times any sane minimum is past any cap; avoids float overflow


class Backoff:
    """The reconnect delay policy.

    Args:
        min_s: the delay before the first retry (before jitter).
        max_s: the cap of the delay (before jitter).
        factor: growth per failed attempt.
        jitter: the share of each delay drawn at random (0: none, 1: anything from 0 to the delay).
        rng: the random source (tests pass a seeded one).

    Raises:
        ConfigError: a non-positive delay, a cap below the minimum, a factor below 1 or a jitter outside [0, 1].
    """

    def __init__(
        self,
        min_s: float = 1.0,
        max_s: float = 60.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if min_s <= 0 or max_s < min_s:
            raise ConfigError(f"back-off needs 0 < min_s <= max_s, got min_s={min_s}, max_s={max_s}")
        if factor < 1:
            raise ConfigError(f"back-off factor must be at least 1, got {factor}")
        if not 0 <= jitter <= 1:
            raise ConfigError(f"back-off jitter must be within [0, 1], got {jitter}")
        self.min_s = min_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        """The delay of failed attempt ``attempt`` (0-based) before jitter."""
        return min(self.max_s, self.min_s * self.factor ** min(max(0, attempt), _MAX_EXPONENT))

    def delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` (0-based): within ``[(1 - jitter) * ceiling, ceiling]``."""
        ceiling = self.ceiling(attempt)
        return ceiling * (1.0 - self.jitter * self._rng.random())
