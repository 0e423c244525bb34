"""HTTP dates (Last-Modified, Retry-After) as POSIX times.

Every current server sends the one fixed form RFC 9110 asks for (IMF-fixdate): it is
read here; the obsolete forms a server may still send are read by the standard
library's ``email.utils``, imported only for them (2 ms of a sync's start-up, with the
MIME modules it brings).
"""

from __future__ import annotations

import datetime
import re

_FIXDATE = re.compile(
    r"[A-Z][a-z]{2}, (\d\d) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT", re.ASCII
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


def http_date(text: str | None) -> float | None:
    """``text`` as a POSIX time; None where it is absent or no HTTP date."""
    if not text:
        return None
    match = _FIXDATE.fullmatch(text.strip())
    if match is not None and match[2] in _MONTHS:
        day, month, year, hour, minute, second = match.groups()
        utc = datetime.timezone.utc
        try:
            when = datetime.datetime(
                int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), 0, utc
            )
            return when.timestamp()
        except ValueError:
            pass  # as the standard library would find it
    import email.utils

    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
