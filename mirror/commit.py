"""Publish one subdir, the same crash-safe way for every writer.

Sync, bundle import, ``ferry publish`` and ``ferry index`` all end here, under the
subdir's lock, once their package files are on the target: index (records known to
the writer taken verbatim, other package files read), publish (the shards and package
pages, which nothing links yet, started first; the packages made durable before any
repodata names them), delete what left, save the state. The order is what makes a
kill at any instant harmless: nothing is named before it is durable, nothing is
deleted while a published record still names it.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import msgspec

from conda_ferry.gateways import Gateway, NotFound
from conda_ferry.index.channel import (
    ChannelEntry,
    IndexOptions,
    SubdirSummary,
    build_subdir,
    publish_built,
)
from conda_ferry.index.subdir import SubdirView

from . import snapstore
from .byname import Aside, ByName, when_asked
from .errors import FerryError
from .state import STATE_DIR, SubdirState, sweep_temps
from .upstream import Descriptions

log = logging.getLogger("ferry.commit")
Record = Mapping[str, Any]  # a dict, or a record read compactly (index.compact)
R = TypeVar("R", bound=Mapping[str, Any])
DEFAULT_GRACE = 7 * 86400.0  # CEP 16 asks servers to keep stale shards about a week
# records sent to another process for the pages, at most: beyond, their copy through a
# pipe costs more memory than a run of a channel that size may have to spare
ASIDE_AT_MOST = 100_000


def choose_records(
    wanted: Mapping[str, R],
    ready: Collection[str],
    published: Mapping[str, R],
    present: Collection[str],
) -> dict[str, R]:
    """The records to publish: what the writer wants, where the file is known good.

    ``ready``: files known to hold exactly the bytes their wanted record describes
    (verified on arrival, or unchanged since they were). A wanted file that is not
    ready but present keeps its published record: the file is still the old one, and
    the old record is still true of it. Anything else is left out: never a record
    whose file is missing or unverified.
    """
    chosen: dict[str, R] = {}
    for filename, record in wanted.items():
        if filename in ready:
            chosen[filename] = record
        elif filename in present and filename in published:
            chosen[filename] = published[filename]
    return chosen


class Commit(msgspec.Struct):
    """What a writer hands over once its package files are in place."""

    known: Mapping[str, Record]  # records published verbatim (their files are ready)
    managed: set[str]  # files the mirror owns from upstream (the state's list)
    remove: list[str] = []  # unpublished; deleted after the grace
    extras: Mapping[str, dict[str, Any]] = {}  # channeldata input
    grace: float = DEFAULT_GRACE  # seconds a file stays after repodata stops naming it
    hidden: set[str] = set()  # present, not published, not owned

    @property
    def skip(self) -> set[str]:
        """Files not to be published: the mirror's own on their way in or out, and
        ``hidden`` ones. They are never read as custom packages."""
        return (self.managed - self.known.keys()) | self.hidden


class Committing:
    """One subdir's commit, its records indexed and its parts of names started;
    :meth:`finish` publishes it. ``aside``: where the shards and package pages of a
    local target are written while the rest of the repodata is published, in parts,
    one for each of ``spare`` workers (see :mod:`.byname`). A writer of several
    subdirs starts the next one's while this one waits for its parts: the next parts
    queue behind these in the workers, so none idles between two subdirs. Starting
    changes nothing in ``state``, and on the target, besides what a killed run left
    half-written, only writes shards and pages that nothing links yet."""

    def __init__(
        self,
        target: Gateway,
        view: SubdirView,
        commit: Commit,
        state: SubdirState,
        options: IndexOptions,
        aside: Aside = when_asked,
        spare: int = 1,
        start: bool = True,
    ) -> None:
        self._target, self._view, self.commit = target, view, commit
        self._state, self._options = state, options
        self._built = build_subdir(target, view, options, commit.known, commit.skip, commit.extras)
        if target.scheme != "file" or len(self._built.entries) > ASIDE_AT_MOST:
            # a remote target's writes overlap already (write_many), and a worker would
            # open one more connection to it
            aside, spare = when_asked, 1
        self._byname = ByName(target, view, self._built, state, options, aside, spare, start)

    def start(self) -> None:
        """Its parts of names started, where they were not when it was made."""
        self._byname.start()

    @property
    def entries(self) -> list[ChannelEntry]:
        """The subdir's channeldata input, as :meth:`finish` returns it."""
        return self._built.entries

    def finish(
        self, meanwhile: Callable[[], None] | None = None
    ) -> tuple[SubdirSummary, list[ChannelEntry]]:
        """Publish the subdir; ``meanwhile`` runs once its repodata is out, before this
        waits for its parts."""
        target, view, commit, state, built = (
            self._target,
            self._view,
            self.commit,
            self._state,
            self._built,
        )
        state.counts = {
            "records": len(built.entries),
            "packages": len({e.record.get("name") for e in built.entries}),
            "bytes": sum(int(e.record.get("size", 0)) for e in built.entries),
        }
        byname = self._byname
        byname.meanwhile = meanwhile
        summary = publish_built(target, view, self._options, built, state.shards, byname.sharded)
        state.shards = summary.shard_keys
        byname.finish(state)
        gone = expire(target, view.subdir, state, _candidates(commit, summary, state), commit.grace)
        state.upstream_files = sorted(commit.managed - gone)
        published = commit.known.keys() | gone  # no more news of these for the journal
        state.verified = {f: sha for f, sha in state.verified.items() if f not in published}
        state.save(target)
        summary.deleted.extend(f"{view.subdir}/{f}" for f in sorted(gone))
        audit(target, view.subdir, view.published.keys(), summary.published)
        return summary, built.entries


def audit(target: Gateway, subdir: str, before: Collection[str], after: Collection[str]) -> None:
    """One JSON line per run that changed what the subdir publishes, so "when did
    this package appear in our mirror?" has an answer. Monthly files per subdir,
    written under the subdir's lock (object stores cannot append)."""
    # a killed run's partial file goes even when this run has no line to add
    sweep_temps(target, f"{STATE_DIR}/audit", f".{subdir}-")
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    if not added and not removed:
        return
    now = time.time()
    path = f"{STATE_DIR}/audit/{subdir}-{time.strftime('%Y-%m', time.gmtime(now))}.jsonl"
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "host": socket.gethostname(),
        "subdir": subdir,
        "added": added,
        "removed": removed,
    }
    try:
        earlier = target.read_bytes(path)
    except NotFound:
        earlier = b""
    target.write_bytes(path, earlier + json.dumps(line, sort_keys=True).encode() + b"\n")


def _candidates(commit: Commit, summary: SubdirSummary, state: SubdirState) -> set[str]:
    """Files of the subdir no published file names any more: packages the writer let
    go (now, or earlier and still not back) and shards no index references."""
    earlier = {f for f in state.due if "/" not in f and f not in commit.known}
    return set(commit.remove) | earlier | set(summary.stale)


def expire(
    target: Gateway, subdir: str, state: SubdirState, candidates: set[str], grace: float
) -> set[str]:
    """Schedule ``candidates`` for deletion ``grace`` seconds from their first sight
    (a client holding yesterday's index still finds its files, as CEP 16 asks for
    shards) and delete those due; what is no longer a candidate is forgiven. A
    package file a snapshot names stays due until that snapshot is deleted."""
    now = time.time()
    state.due = {f: state.due.get(f, now + grace) for f in sorted(candidates)}
    gone = {f for f, when in state.due.items() if when <= now}
    if gone:
        try:
            gone -= snapstore.held(target, subdir, gone)
        except FerryError as exc:  # cannot tell what snapshots need: delete nothing
            log.error("%s; nothing deleted", exc)
            gone = set()
    for name in sorted(gone):
        target.delete(f"{subdir}/{name}")
        del state.due[name]
    return gone


def mirrored(view: SubdirView, state: SubdirState, descriptions: Descriptions) -> Commit:
    """A re-index that changes no package: mirrored records stay verbatim (their
    upstream hot-fixes included), as does what the channel says of them
    (``descriptions`` read from the target itself); other package files are read."""
    managed = set(state.upstream_files)
    known = {fn: r for fn, r in view.published.items() if fn in managed and fn in view.packages}
    return Commit(known, managed, extras=descriptions.extras(view.subdir, known))


def collect_garbage(
    target: Gateway, subdir: str, everything: bool
) -> tuple[list[str], dict[str, float]]:
    """Delete the subdir's files whose grace has passed (``everything``: all of them
    now), and what a killed writer of its state left; the caller holds its lock. The
    paths deleted, and when each file still in its grace is due."""
    state = SubdirState.load(target, subdir)
    if everything:
        state.due = dict.fromkeys(state.due, 0.0)
    gone = expire(target, subdir, state, set(state.due), 0.0)
    state.upstream_files = sorted(set(state.upstream_files) - gone)
    state.save(target)
    return sorted(f"{subdir}/{name}" for name in gone), state.due
