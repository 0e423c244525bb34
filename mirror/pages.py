"""A subdir's browsable pages: ``index.html`` lists every package name with its newest
version, and ``pages/<name>.html`` lists the builds of one name.

They describe what the repodata publishes, so they are written after it, and only
where their bytes changed: the digests of what was written are kept in the subdir's
state, so an unchanged subdir costs no write and a 500,000-record subdir no read of
its tens of thousands of pages. A listing that would pass a few MB is split in parts
by name range, so a browser never has to take in one enormous page.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import orjson

from conda_ferry.gateways import Gateway, NotFound, is_temp
from conda_ferry.index.channel import ChannelEntry
from conda_ferry.index.compact import as_fragment, bulk, fields, plain
from conda_ferry.index.rattlertypes import (  # loaded before workers fork
    InvalidVersionError,
    Version,
)

from .html import GENERATOR, date, esc, page, search_box, table
from .units import as_int, human_size, plural

PAGES_DIR = "pages"
LISTING_LIMIT = 2 * 1024 * 1024  # bytes of rows in one listing page before it is split
SUMMARY_CHARS = 160  # of a summary in the listing; the package page has all of it
NAME = re.compile(r"[a-z0-9_][a-z0-9_.+-]*")  # a name safe as a file name of ours
PLAIN = re.compile(r"[A-Za-z0-9_.+!-]+")  # a file name that is its own URL
LINKABLE = re.compile(r"https?://", re.IGNORECASE)  # never a javascript: URL
SORTED_BY = ("version", "build_number", "timestamp")  # builds of a name, newest first


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


# The code that renders pages: a new release's pages differ, so they are rewritten.
TEMPLATES = hashlib.blake2b(
    Path(__file__).read_bytes() + Path(__file__).with_name("html.py").read_bytes()
).digest()


class Package(msgspec.Struct, dict=True):
    """One package name of a subdir: its builds, newest first."""

    name: str
    builds: list[tuple[str, Mapping[str, Any]]] = []  # file, record
    about: dict[str, Any] = {}

    @functools.cached_property
    def newest(self) -> Mapping[str, Any]:
        """Decoded once: the package's page and its listing row read several fields."""
        return plain(self.builds[0][1])

    @functools.cached_property  # a page, its listing row and the listing's total
    def size(self) -> int:
        return sum(as_int(record.get("size")) for _, record in self.builds)

    @property
    def link(self) -> str | None:
        return f"{PAGES_DIR}/{self.name}.html" if NAME.fullmatch(self.name) else None

    def describe(self, key: str) -> str:
        """Channeldata's word first (upstream's), else the newest record's."""
        value = self.about.get(key) or self.newest.get(key) or ""
        return value if isinstance(value, str) else str(value)


@bulk()  # a Package per name, a list entry per record
def group(entries: Iterable[ChannelEntry]) -> list[Package]:
    """Records by name, builds in conda's order, newest first (rattler decides)."""
    packages: dict[str, Package] = {}
    for entry in entries:
        name = str(entry.record.get("name", ""))
        package = packages.get(name) or packages.setdefault(name, Package(name))
        package.builds.append((entry.filename, entry.record))
        if entry.extras.get("about"):
            package.about = entry.extras["about"]
    parsed: dict[str, Any] = {}

    def order(item: tuple[str, Mapping[str, Any]]) -> tuple[Any, int, int]:
        version, build_number, timestamp = fields(item[1], SORTED_BY)
        text = "" if version is None else str(version)
        if text not in parsed:
            try:
                parsed[text] = Version(text)
            except InvalidVersionError:  # a record that got this far sorts last
                parsed[text] = Version("0")
        return parsed[text], as_int(build_number), as_int(timestamp)

    for package in packages.values():
        if len(package.builds) > 1:
            package.builds.sort(key=order, reverse=True)
    return [packages[name] for name in sorted(packages)]


def _href(filename: str) -> str:
    return filename if PLAIN.fullmatch(filename) else esc(quote(filename))


def package_page(subdir: str, package: Package) -> bytes:
    home, summary = package.describe("home"), package.describe("summary")
    facts = [
        f"<p>{esc(summary)}</p>\n" if summary else "",
        "<p>",
        f"Licence: {esc(package.describe('license') or 'not stated')}",
        f' · <a href="{esc(home)}" rel=nofollow>{esc(home)}</a>' if LINKABLE.match(home) else "",
        f" · {plural(len(package.builds), 'build')}, {human_size(package.size)}</p>\n",
    ]
    rows = (
        f"<tr><td>{esc(r.get('version', ''))}</td><td>{esc(r.get('build', ''))}</td>"
        f"<td class=n>{human_size(as_int(r.get('size')))}</td><td>{date(r.get('timestamp'))}</td>"
        f"<td>{esc(', '.join(map(str, r.get('depends') or [])))}</td>"
        f'<td><a href="../{_href(filename)}">{esc(filename)}</a></td></tr>\n'
        # a row reads most fields: one record decoded whole beats five one-field reads
        for filename, r in ((f, plain(record)) for f, record in package.builds)
    )
    headers = ("Version", "Build", "Size", "Date", "Depends", "File")
    nav = f'<a href="../../index.html">channel</a> / <a href="../index.html">{esc(subdir)}</a>'
    return page(package.name, nav, [*facts, *table(headers, rows)])


def _listing_row(package: Package) -> str:
    link = package.link
    name = esc(package.name)
    summary = package.describe("summary")
    if len(summary) > SUMMARY_CHARS:
        summary = summary[: SUMMARY_CHARS - 1] + "…"
    return (
        f"<tr><td>{f'<a href={chr(34)}{link}{chr(34)}>{name}</a>' if link else name}</td>"
        f"<td>{esc(package.newest.get('version', ''))}</td><td class=n>{len(package.builds)}</td>"
        f"<td class=n>{human_size(package.size)}</td><td>{esc(package.describe('license'))}</td>"
        f"<td>{esc(summary)}</td></tr>\n"
    )


class Rows(msgspec.Struct):
    """The listing's rows of some of a subdir's names, in name order, and what they
    count: made where their package pages are, joined where the listing is."""

    rows: list[tuple[str, str]] = []  # name, row
    records: int = 0
    size: int = 0

    @classmethod
    def of(cls, packages: list[Package]) -> Rows:
        return cls(
            [(p.name, _listing_row(p)) for p in packages],
            sum(len(p.builds) for p in packages),
            sum(p.size for p in packages),
        )


def listing_pages(subdir: str, listed: list[Rows]) -> Iterator[tuple[str, bytes]]:
    """``index.html`` (and ``index-2.html``, ... when split): one row per name, the
    names of each of ``listed`` after those of the one before."""
    parts: list[list[str]] = [[]]
    firsts: list[str] = []
    size = 0
    for name, row in (named for rows in listed for named in rows.rows):
        if size + len(row) > LISTING_LIMIT and parts[-1]:
            parts.append([])
            size = 0
        if not parts[-1]:
            firsts.append(name)
        parts[-1].append(row)
        size += len(row)
    names = [f"index-{i + 1}.html" if i else "index.html" for i in range(len(parts))]
    packages = sum(len(rows.rows) for rows in listed)
    records = sum(rows.records for rows in listed)
    total = human_size(sum(rows.size for rows in listed))
    headers = ("Package", "Newest", "Builds", "Size", "Licence", "Summary")
    for i, rows in enumerate(parts):
        ranges = ""
        if len(parts) > 1:
            links = (
                esc(first[:12]) if j == i else f'<a href="{names[j]}">{esc(first[:12])}…</a>'
                for j, first in enumerate(firsts)
            )
            ranges = f"<p>Part {i + 1} of {len(parts)} by name: {' | '.join(links)}</p>\n"
        body = [
            f"<p>{plural(packages, 'package')}, {plural(records, 'file')}, {total} · "
            '<a href="repodata.json">repodata.json</a></p>\n',
            ranges,
            search_box(len(rows)),
            *table(headers, rows, filtered=True),
        ]
        nav = '<a href="../index.html">channel</a>'
        yield names[i], page(subdir, nav, body, search=True)


class PageWrite(msgspec.Struct):
    written: list[str] = []
    deleted: list[str] = []
    # page -> digest: of its inputs (package pages), of its bytes (listings)
    digests: dict[str, str] = {}
    have: set[str] = set()  # the pages there before
    listings: list[tuple[str, bytes]] = []  # not written yet


def _inputs(package: Package) -> str:
    """What a package page is made of, hashed: a page whose inputs and templates are
    unchanged is not even rendered (most names, most nights)."""
    inputs = [package.builds, package.about]
    try:
        data = orjson.dumps(inputs, default=as_fragment, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson's refusal (an integer past 64 bits, say) is a TypeError
        data = json.dumps(
            [[(f, plain(r)) for f, r in package.builds], package.about],
            sort_keys=True,
            default=repr,
        ).encode()
    return digest(TEMPLATES + data)


def present_pages(gateway: Gateway, subdir: str, present: set[str]) -> set[str]:
    """The subdir's pages there now: the package pages, and of ``present`` (the
    subdir's own files) the listings."""
    return {f"{PAGES_DIR}/{name}" for name in gateway.names(f"{subdir}/{PAGES_DIR}")} | present


class PagePart(msgspec.Struct):
    """The package pages of some of a subdir's names (see :func:`write_page_part`)."""

    written: list[str]
    digests: dict[str, str]  # page -> the digest of its inputs
    rows: Rows


def write_page_part(
    gateway: Gateway,
    subdir: str,
    entries: list[ChannelEntry],
    previous: dict[str, str],
    have: set[str],
    jobs: int = 8,
    flush: bool = True,
    staging: str | None = None,
) -> PagePart:
    """The package pages of the names in ``entries`` (all of a subdir's, or a part
    of them that another process writes beside the others) that changed, written and
    durable (unless not ``flush``: then the caller's next flush makes them so, before
    a listing links them), and their rows of the listing. The bulk of a commit's
    work. With a ``staging`` directory (the pages directory's, while it is made: no
    page is there), they are written in it, and named as they will be once it is
    renamed."""
    packages = group(entries)
    digests: dict[str, str] = {}
    written: list[str] = []

    def changed() -> Iterator[tuple[str, bytes]]:
        for package in packages:
            path = package.link
            if path is None:
                continue
            digests[path] = _inputs(package)
            if previous.get(path) != digests[path] or path not in have:
                written.append(f"{subdir}/{path}")
                into = f"{subdir}/{path}" if staging is None else f"{staging}/{package.name}.html"
                yield into, package_page(subdir, package)

    gateway.write_many(changed(), jobs, unseen=staging is not None)
    if written and flush:
        gateway.flush()  # the package pages are durable before a listing links them
    return PagePart(written, digests, Rows.of(packages))


def join_pages(subdir: str, have: set[str], parts: list[PagePart]) -> PageWrite:
    """One subdir's package pages from its parts (in name order), and its listings
    made but not written."""
    result = PageWrite(have=have)
    for part in parts:
        result.written.extend(part.written)
        result.digests.update(part.digests)
    result.listings = list(listing_pages(subdir, [part.rows for part in parts]))
    return result


def write_listings(
    gateway: Gateway,
    subdir: str,
    result: PageWrite,
    previous: dict[str, str],
    trusted: dict[str, str],
) -> PageWrite:
    """The listings that changed (against ``trusted``, the digests of pages believed
    intact), then the removal of pages of names that left (all ``previous`` ones)."""
    for path, data in result.listings:
        result.digests[path] = digest(data)
        if trusted.get(path) != result.digests[path] or path not in result.have:
            gateway.write_bytes(f"{subdir}/{path}", data)
            result.written.append(f"{subdir}/{path}")
    result.listings = []
    for path in sorted(result.have - result.digests.keys()):
        if path in previous or (path.startswith(f"{PAGES_DIR}/") and _ours(path)):
            gateway.delete(f"{subdir}/{path}")
            result.deleted.append(f"{subdir}/{path}")
    return result


def _ours(path: str) -> bool:
    """Files of the pages directory that a writer of ours left: pages and temps."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".html") or is_temp(name)


def remove_pages(gateway: Gateway, subdir: str, previous: dict[str, str]) -> list[str]:
    """``outputs: {html: false}``: the pages go; a page that is not ours stays."""
    gone = []
    for path in sorted(previous):
        try:
            gateway.delete(f"{subdir}/{path}")
        except NotFound:
            continue
        gone.append(f"{subdir}/{path}")
    return gone


def is_ours(data: bytes) -> bool:
    return f'<meta name=generator content="{GENERATOR}">'.encode() in data[:1024]
