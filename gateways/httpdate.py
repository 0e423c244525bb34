"""HTTP dates (Last-Modified, Retry-After) as POSIX times.

Every current server sends the one fixed form RFC 9110 asks for (IMF-fixdate): it is
read here; the obsolete forms a server may still send are read by the standard
library's ``email.utils``, imported only for them (2 ms of a sync's start-up, with the
MIME modules it brings).
"""

from __future__ import annotations

import datetime
import re

_FIXDATE = re.compile(r"[A-Z][a-z]{2}, (\d\d) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT")
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
        day, _, year, hour, minute, second = (int(g) if g.isdigit() else 0 for g in match.groups())
        try:
            when = datetime.datetime(
                year, _MONTHS[match[2]], day, hour, minute, second, tzinfo=datetime.timezone.utc
            )
            return when.timestamp()
        except ValueError:
            pass  # as the standard library would find it
    import email.utils

    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
