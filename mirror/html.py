"""The frame every page of a mirror shares: one stylesheet, escaping, the search script.

Every value put into a page comes from upstream (licences, summaries, depends) or
the user, so every one goes through :func:`esc`; nothing is ever inserted as markup.
Pages are static and self-contained (no external asset, no framework): they must
render from an air-gapped file share as well as from nginx.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable
from typing import Any

SPECIAL = re.compile("[&<>\"']")  # what html.escape would change, and how (as it does:
# the html package's own import, its table of entities, cost 1.5 ms of every start)
ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"})
GENERATOR = "conda-ferry"  # marks a page as ours: only ours are ever removed

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem 1.5rem}
h1{font-size:1.5rem;margin:.2rem 0 .6rem}h2{font-size:1.15rem;margin:1.4rem 0 .4rem}
nav{margin:.3rem 0 .8rem;color:#57606a}a{color:#0550ae}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.25rem .5rem;vertical-align:top}
th{border-bottom:2px solid #d0d7de}tr+tr td{border-top:1px solid #eaeef2}
td.n{text-align:right;white-space:nowrap}code,pre{font:13px ui-monospace,monospace}
pre{background:#f6f8fa;padding:.6rem .8rem;overflow-x:auto}
.bad{color:#cf222e;font-weight:600}.good{color:#1a7f37}.muted{color:#57606a}
input[type=search]{font-size:1rem;padding:.35rem .5rem;width:min(28rem,100%);margin:.3rem 0 .6rem}
""".strip()

# Filters the rows of the table marked data-filter as you type: a plain, case-
# insensitive substring match on each row's text. The box stays hidden without
# JavaScript, where the full table is shown.
SEARCH_SCRIPT = """
(function(){var q=document.getElementById('q'),c=document.getElementById('shown');
var rows=[].slice.call(document.querySelectorAll('table[data-filter] tbody tr'));
var text=rows.map(function(r){return r.textContent.toLowerCase();});
q.hidden=false;q.addEventListener('input',function(){var t=q.value.trim().toLowerCase(),n=0;
for(var i=0;i<rows.length;i++){var hit=!t||text[i].indexOf(t)>=0;rows[i].hidden=!hit;if(hit)n++;}
c.textContent=n;});})();
""".strip()


def esc(value: Any) -> str:
    """Any value as text that cannot become markup, in content or in a quoted attribute."""
    text = value if isinstance(value, str) else str(value)
    return text.translate(ESCAPES) if SPECIAL.search(text) else text


HEAD = (  # what every page starts with, up to its title
    "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
    '<meta name=viewport content="width=device-width,initial-scale=1">'
    f'<meta name=generator content="{GENERATOR}"><title>'
)
STYLED = f"</title><style>{STYLE}</style></head><body>\n"


def page(title: str, nav: str, body: Iterable[str], search: bool = False) -> bytes:
    """A complete page; ``nav`` and ``body`` are markup made with :func:`esc`."""
    title = esc(title)
    parts = [
        f"{HEAD}{title}{STYLED}<nav>{nav}</nav>\n" if nav else f"{HEAD}{title}{STYLED}",
        f"<h1>{title}</h1>\n",
        *body,
        f"\n<script>{SEARCH_SCRIPT}</script>" if search else "",
        "\n</body></html>\n",
    ]
    # a byte of a path or URL that is no text (the target's, the source's: 0xff as the
    # command line gave it) is written as ferry's error lines write it, \udcff
    return "".join(parts).encode("utf-8", "backslashreplace")


def search_box(count: int) -> str:
    return (
        '<p><input id=q type=search hidden placeholder="Filter packages" '
        'aria-label="Filter packages" autocomplete=off> '
        f"<span class=muted><span id=shown>{count}</span> shown</span></p>\n"
    )


def table(headers: tuple[str, ...], rows: Iterable[str], filtered: bool = False) -> Iterable[str]:
    """``rows``: ``<tr>`` markup, streamed so a long table is never one list."""
    yield _table_head(headers, filtered)
    yield from rows
    yield "</tbody></table>\n"


@functools.cache  # a few fixed heads, one per kind of page: made once, not per page
def _table_head(headers: tuple[str, ...], filtered: bool) -> str:
    cells = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table{' data-filter' if filtered else ''}><thead><tr>{cells}</tr></thead><tbody>\n"


def date(stamp: Any) -> str:
    """A record's ``timestamp`` (seconds or milliseconds) as a UTC date."""
    try:
        value = float(stamp)
    except (TypeError, ValueError):
        return ""
    if value > 1e11:
        value /= 1000
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(value))
    except (OverflowError, OSError, ValueError):
        return ""
