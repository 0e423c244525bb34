"""How numbers and times read in every message, state file and page: one size
style, real plurals, one UTC time format."""

from __future__ import annotations

import calendar
import itertools
import time
from typing import Any

UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc(when: float) -> str:
    return time.strftime(UTC_FORMAT, time.gmtime(when))


def parse_utc(text: Any) -> float | None:
    """A time written by :func:`utc`, or None for anything else."""
    try:
        return float(calendar.timegm(time.strptime(str(text), UTC_FORMAT)))
    except ValueError:
        return None


def human_size(size: int) -> str:
    """Bytes in binary units, one decimal past KiB: ``512 B``, ``3.1 KiB``, ``57.7 MiB``."""
    if size < 0:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """A span in its two largest units, minutes whole: ``45 s``, ``12 min``, ``3 h 5
    min``, ``2 d 4 h``."""
    whole = max(0, round(seconds))
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    for (unit, size), (smaller, next_size) in itertools.pairwise(units):
        if whole >= size:
            rest = whole % size // next_size if unit != "min" else 0
            return f"{whole // size} {unit}" + (f" {rest} {smaller}" if rest else "")
    return f"{whole} s"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``3 files``; ``many`` where adding an s is wrong."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def as_int(value: Any) -> int:
    """A count or size from metadata we did not write, 0 when it is none."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
