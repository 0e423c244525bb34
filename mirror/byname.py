"""A subdir's files of one per package name, its shards (CEP 16) and its package
pages, written in parts beside its repodata.

They are most of a large commit's work, and the same work name by name: so each
spare worker takes a part of the names (about as many records each) and writes
both kinds for it, while this process publishes the repodata; the parts are then
joined here into the shard index and the listings. Split by kind instead (one
worker the shards, the other the pages), the pages' worker ended 40 ms after the
shards' on a disk, and the records went down the pipes twice. Nothing a part writes
is named before it is joined: a shard is named by the index, a package page by the
listings, and each part makes its files durable first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

import msgspec

from conda_ferry.gateways import Gateway
from conda_ferry.index.channel import BuiltSubdir, ChannelEntries, ChannelEntry, IndexOptions
from conda_ferry.index.publish import (
    Sharded,
    ShardPart,
    join_shards,
    present_shards,
    write_shard_part,
)
from conda_ferry.index.records import package_key
from conda_ferry.index.shards import SHARDS_DIR
from conda_ferry.index.subdir import SubdirView

from .pages import (
    PAGES_DIR,
    PagePart,
    join_pages,
    present_pages,
    remove_pages,
    write_listings,
    write_page_part,
)
from .state import SubdirState

T = TypeVar("T")


class Aside(Protocol):
    """Starts ``job(gateway, *args)`` where it runs beside this process's own work (a
    worker process of a sync), or nowhere yet; the callable returned gives its result."""

    def __call__(
        self, job: Callable[..., T], gateway: Gateway, /, *args: Any
    ) -> Callable[[], T]: ...


def when_asked(job: Callable[..., T], gateway: Gateway, *args: Any) -> Callable[[], T]:
    """No other process: the job runs when its result is asked for."""
    return functools.partial(job, gateway, *args)


class Part(msgspec.Struct):
    shards: ShardPart | None
    pages: PagePart | None


class Inputs(msgspec.Struct):
    """What every part is given besides its records: the files there now, and what
    the last publication knew of them (None: that kind is not written)."""

    shards_have: set[str] | None = None
    shard_keys: dict[str, str] = {}
    reread: bool = False
    pages_have: set[str] | None = None
    pages_previous: dict[str, str] = {}
    jobs: int = 8
    # where a kind's directory holds none of its files yet, the directory every part
    # writes them in, renamed to it once all are written (see staging_directory)
    shards_staging: str | None = None
    pages_staging: str | None = None


def write_part(
    gateway: Gateway,
    subdir: str,
    entries: list[ChannelEntry],
    given: Inputs,
    pages_first: bool = False,
) -> Part:
    """The shards and package pages of the names of ``entries``, written and durable;
    ``pages_first`` in every other part, so that two parts mostly create files in
    two directories at a time (creating in one directory takes its lock)."""

    def shards() -> ShardPart | None:
        if given.shards_have is None:
            return None
        document: dict[str, dict[str, Any]] = {"packages": {}, "packages.conda": {}}
        for entry in entries:
            document[package_key(entry.filename)][entry.filename] = entry.record
        have, keys, staging = given.shards_have, given.shard_keys, given.shards_staging
        return write_shard_part(gateway, subdir, document, have, given.reread, keys, False, staging)

    def pages() -> PagePart | None:
        if given.pages_have is None:
            return None
        have, previous, staging = given.pages_have, given.pages_previous, given.pages_staging
        return write_page_part(gateway, subdir, entries, previous, have, given.jobs, False, staging)

    if pages_first:
        written = pages()
        part = Part(shards(), written)
    else:
        part = Part(shards(), pages())
    gateway.flush()  # one flush for both kinds: nothing names either before it
    return part


def split(entries: list[ChannelEntry], count: int) -> list[ChannelEntries]:
    """``entries`` in ``count`` parts (fewer if there are fewer names) of consecutive
    names, about as many records each; each part keeps the order of ``entries``."""
    names = [str(entry.record.get("name", "")) for entry in entries]
    sizes: dict[str, int] = {}
    for name in names:
        sizes[name] = sizes.get(name, 0) + 1
    part_of: dict[str, int] = {}
    seen = 0
    for name in sorted(sizes):
        middle = 2 * seen + sizes[name]  # twice the name's middle record, of twice all
        part_of[name] = min(count - 1, middle * count // (2 * len(entries)))
        seen += sizes[name]
    parts = [ChannelEntries() for _ in range(count)]
    for name, entry in zip(names, entries, strict=True):
        parts[part_of[name]].append(entry)
    return [part for part in parts if part] or [ChannelEntries()]


class ByName:
    """The parts of one subdir's names, started ``aside`` (a worker each, where there
    are ``spare`` workers) when made, or by :meth:`start`: :attr:`sharded` gives
    their shards, once the repodata is out, and :meth:`finish` their pages' listings."""

    def __init__(
        self,
        target: Gateway,
        view: SubdirView,
        built: BuiltSubdir,
        state: SubdirState,
        options: IndexOptions,
        aside: Aside,
        spare: int,
        start: bool = True,
    ) -> None:
        self._target, self._subdir = target, view.subdir
        self._info = built.document.get("info", {})
        # a page is trusted by the digest the state keeps of it; a repair writes each anew
        self._trusted = {} if options.reread else state.pages
        given = self._given = Inputs(reread=options.reread, jobs=options.jobs)
        if options.outputs.shards:
            given.shards_have, given.shard_keys = present_shards(target, view.subdir), state.shards
        if options.outputs.html:
            given.pages_have = present_pages(target, view.subdir, view.names)
            given.pages_previous = self._trusted
        parts = split(built.entries, max(1, spare))
        if given.shards_have is None and given.pages_have is None:
            parts = []
        # a kind new here has its directory made whole, then named (see Inputs)
        self._new = [
            kind
            for kind, have in ((SHARDS_DIR, given.shards_have), (PAGES_DIR, given.pages_have))
            if have is not None
            and built.entries
            and not any(path.startswith(f"{kind}/") for path in have)
        ]
        self._aside, self._unstarted = aside, parts
        self._started: list[Callable[[], Part]] = []
        self._parts: list[Part | Exception] | None = None
        # what the caller has to do before it needs the parts: run by the first wait
        self.meanwhile: Callable[[], None] | None = None
        if start:
            self.start()

    def start(self) -> None:
        """The parts handed ``aside``, if they were not yet (a kind new here gets its
        staging directory now, not while a transfer that may be stopped runs)."""
        parts, self._unstarted = self._unstarted, []
        if not parts:
            return
        given, new, self._new = self._given, self._new, []
        if SHARDS_DIR in new:
            given.shards_staging = self._target.staging_directory(f"{self._subdir}/{SHARDS_DIR}")
        if PAGES_DIR in new:
            given.pages_staging = self._target.staging_directory(f"{self._subdir}/{PAGES_DIR}")
        self._started += [
            self._aside(write_part, self._target, self._subdir, part, self._given, i % 2 == 1)
            for i, part in enumerate(parts)
        ]

    def _done(self) -> list[Part]:
        if self._parts is None:
            self.start()
            meanwhile, self.meanwhile = self.meanwhile, None
            if meanwhile is not None:
                meanwhile()
            heard: list[Part | Exception] = []
            for started in self._started:  # every part heard: each worker is free again
                try:
                    heard.append(started())
                except Exception as exc:
                    heard.append(exc)
            self._parts = heard
        failed = [p for p in self._parts if isinstance(p, Exception)]
        if failed:
            raise failed[0]
        return cast(list[Part], self._parts)

    @property
    def sharded(self) -> Callable[[], Sharded] | None:
        """What gives the subdir's shards (None: they are off)."""
        return None if self._given.shards_have is None else self._shards

    def _shards(self) -> Sharded:
        given = self._given
        assert given.shards_have is not None
        parts = [p.shards for p in self._done() if p.shards is not None]
        if given.shards_staging is not None:  # every shard is in it, durable
            self._target.publish_directory(given.shards_staging, f"{self._subdir}/{SHARDS_DIR}")
            given.shards_staging = None
        return join_shards(self._info, given.shards_have, parts)

    def finish(self, state: SubdirState) -> None:
        """The listings, which link the package pages, written as they describe what
        the subdir publishes: after its repodata; or, with pages off, the pages
        removed."""
        have = self._given.pages_have
        if have is None:
            remove_pages(self._target, self._subdir, state.pages)
            state.pages = {}
            return
        pages = join_pages(self._subdir, have, [p.pages for p in self._done() if p.pages])
        if self._given.pages_staging is not None:  # every package page is in it, durable
            self._target.publish_directory(self._given.pages_staging, f"{self._subdir}/{PAGES_DIR}")
            self._given.pages_staging = None
        written = write_listings(self._target, self._subdir, pages, state.pages, self._trusted)
        state.pages = written.digests
