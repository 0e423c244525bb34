"""The channel's front page, ``index.html`` at its root: what the channel is, how
fresh each subdir is, and the lines that point conda, pixi and mamba at it.

Made from what the target keeps (each subdir's state, ``.ferry/channel.json``), so
every writer (sync, index, publish, import) leaves it true, and an unchanged
channel leaves it byte-identical. A front page that is not ours (a custom channel's
own) is never overwritten or removed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import msgspec

from conda_ferry.gateways import Gateway, NotFound, redact
from conda_ferry.index.channel import discover_subdirs
from conda_ferry.index.publish import Written, write_if_changed

from .html import esc, page, table
from .pages import is_ours
from .snapstore import all_snapshots, pinned
from .state import STATE_DIR, SubdirState, sweep_temps
from .units import as_int, human_size

log = logging.getLogger("ferry.pages")
CHANNEL_FILE = f"{STATE_DIR}/channel.json"
PAGE = "index.html"
PLACEHOLDER = "https://HOST/PATH"

# Without a public_url the usage lines show the address the page was opened at.
URL_SCRIPT = """
(function(){if(!/^https?:$/.test(location.protocol))return;
var u=location.href.replace(/[?#].*$/,'').replace(/\\/index\\.html$/,'').replace(/\\/$/,'');
[].forEach.call(document.querySelectorAll('.url'),function(e){e.textContent=u;});})();
""".strip()


def remember_channel(target: Gateway, source: str, public_url: str | None) -> None:
    """What only a sync knows (where the channel comes from, where it is served),
    kept for the writers that come after it (the caller sweeps what a killed writer
    of it left)."""
    data = json.dumps({"source": redact(source), "public_url": public_url}, sort_keys=True)
    write_if_changed(target, CHANNEL_FILE, data.encode(), Written())


class _Channel(msgspec.Struct):
    source: str | None = None
    public_url: str | None = None


def _channel(target: Gateway) -> _Channel:
    """What the last sync remembered; nothing, where that file is gone or damaged."""
    try:
        return msgspec.json.decode(target.read_bytes(CHANNEL_FILE), type=_Channel)
    except (NotFound, msgspec.MsgspecError):
        return _Channel()


def _rows(states: list[SubdirState]) -> Iterator[str]:
    for state in states:
        counts, last = state.counts, state.last_run
        result = str(last.get("result", ""))
        css = "bad" if result == "failed" else "good" if result == "synced" else ""
        why = f"<br><span class=bad>{esc(last['message'])}</span>" if last.get("message") else ""
        figures = [counts.get(k) for k in ("packages", "records")]
        yield (
            f'<tr><td><a href="{esc(state.subdir)}/index.html">{esc(state.subdir)}</a></td>'
            + "".join(f"<td class=n>{'-' if n is None else n}</td>" for n in figures)
            + f"<td class=n>{human_size(counts['bytes']) if 'bytes' in counts else '-'}</td>"
            + f"<td>{esc(last.get('finished', '-'))}</td>"
            + f"<td class={css or 'muted'}>{esc(result or '-')}{why}</td>"
            + f"<td>{esc(state.last_modified or '-')}</td></tr>\n"
        )


def _snapshots(target: Gateway, url: str) -> list[str]:
    """The snapshots, newest first, and how to pin a client to one."""
    found = [s for s in reversed(all_snapshots(target)) if s.complete]
    if not found:
        return []
    pins = pinned(target)
    rows = (
        f"<tr><td>{esc(s.name)}</td><td>{esc(s.created)}</td>"
        f"<td class=n>{sum(as_int(f.get('records')) for f in s.subdirs.values())}</td>"
        f"<td>{esc(', '.join(sorted(s.subdirs)))}</td>"
        f"<td>{'pinned' if s.name in pins else ''}</td></tr>\n"
        for s in found
    )
    return [
        "<h2>Snapshots</h2>\n<p>The channel as it was: use "
        f"<code><span class=url>{url}</span>/snapshots/NAME</code> as the channel.</p>\n",
        *table(("Name", "Created", "Files", "Subdirs", "Pinned"), rows),
    ]


def channel_page(target: Gateway, subdirs: list[str]) -> bytes:
    states = [SubdirState.load(target, s) for s in subdirs]
    channel = _channel(target)
    public = channel.public_url
    url = esc(str(public).rstrip("/")) if public else PLACEHOLDER
    name = (public or target.url).rstrip("/").rsplit("/", 1)[-1] or "channel"
    source = channel.source
    packages = sum(s.counts.get("packages", 0) for s in states)
    records = sum(s.counts.get("records", 0) for s in states)
    size = human_size(sum(s.counts.get("bytes", 0) for s in states))
    origin = f"A mirror of <code>{esc(source)}</code>." if source else "A conda channel."
    use = [
        "<h2>Use it</h2>\n<p>Once:</p>",
        f"<pre>conda install -c <span class=url>{url}</span> PACKAGE</pre>",
        "<p>In <code>.condarc</code> or an <code>environment.yml</code>:</p>",
        f"<pre>channels:\n  - <span class=url>{url}</span></pre>",
        "<p>In <code>pixi.toml</code>:</p>",
        f'<pre>[workspace]\nchannels = ["<span class=url>{url}</span>"]</pre>\n',
    ]
    headers = ("Subdir", "Packages", "Files", "Size", "Last change", "Result", "Upstream as of")
    body = [
        f"<p>{origin} {packages} package names, {records} files, {size}.</p>\n",
        "<h2>Subdirs</h2>\n",
        *table(headers, _rows(states)),
        *use,
        *_snapshots(target, url),
        "" if public else f"<script>{URL_SCRIPT}</script>",
    ]
    return page(f"conda channel {name}", "", body)


def write_channel_page(target: Gateway, html: bool) -> list[str]:
    """The front page after every writer, or its removal when pages are off."""
    try:
        current: bytes | None = target.read_bytes(PAGE)
    except NotFound:
        current = None
    if current is not None and not is_ours(current):
        log.debug("%s: not ours; left as it is", target.display(PAGE))
        return []
    if not html:
        if current is not None:
            target.delete(PAGE)
        return []
    written = Written()
    sweep_temps(target, "", f".{PAGE}.")
    write_if_changed(target, PAGE, channel_page(target, discover_subdirs(target)), written, current)
    return written.paths


def refresh_channel_page(target: Gateway) -> None:
    """Redraw the front page, if the channel has one, after a change only it shows
    (snapshots, pins); a killed writer's partial page goes with it."""
    if target.exists(PAGE):
        write_channel_page(target, True)  # sweeps as it writes
    else:
        sweep_temps(target, "", f".{PAGE}.")
