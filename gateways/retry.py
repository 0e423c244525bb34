"""Bounded exponential backoff with jitter, honouring a server's Retry-After."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec

from .errors import TransientError

log = logging.getLogger("ferry.gateways")
T = TypeVar("T")


class RetryPolicy(msgspec.Struct, frozen=True, gc=False):
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try ``attempt + 1``; a server's Retry-After wins."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)


def call(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Run ``fn``, retrying :class:`TransientError` up to ``policy.attempts`` times."""
    for attempt in range(policy.attempts):
        try:
            return fn()
        except TransientError as exc:
            if attempt + 1 >= policy.attempts:
                raise
            pause = policy.delay(attempt, exc.retry_after)
            log.info("%s: %s; retry %d in %.1fs", what, exc.message, attempt + 1, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")
