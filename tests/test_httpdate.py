"""HTTP dates read as the standard library reads them, every form, and garbage."""

from __future__ import annotations

import email.utils
import subprocess
import sys
import time

import pytest

from conda_ferry.gateways.httpdate import http_date


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # RFC 9110's form
        "Mon, 29 Feb 2044 23:59:59 GMT",
        "  Tue, 01 Dec 2026 00:00:00 GMT ",
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850, obsolete
        "Sun Nov  6 08:49:37 1994",  # asctime, obsolete
        "Sun, 06 Nov 1994 08:49:37 +0200",
        "Tue, 30 Feb 2026 00:00:00 GMT",  # no such day
        "Tue, 01 Foo 2026 00:00:00 GMT",
        "Tue, 01 Dec 2026 25:00:00 GMT",
        "Tue, \u0661\u0662 Dec 2026 00:00:00 GMT",  # digits, but not ASCII ones
        "yesterday",
        "",
    ],
)
def test_an_http_date_is_what_the_standard_library_makes_of_it(text: str) -> None:
    try:
        expected: float | None = email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        expected = None
    assert http_date(text) == expected
    assert http_date(None) is None


def test_the_current_form_is_read_without_the_mime_modules() -> None:
    """email.utils (and the MIME modules it brings) is imported only for the
    obsolete forms: not on a sync's start-up."""
    code = (
        "import sys; from conda_ferry.gateways.httpdate import http_date; "
        f"assert http_date({time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime(1e9))!r}) "
        "== 1e9; assert 'email.utils' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
