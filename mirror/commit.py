"""Publish one subdir, the same crash-safe way for every writer.

Sync, bundle import, ``ferry publish`` and ``ferry index`` all end here, under the
subdir's lock, once their package files are on the target: flush the packages,
index (records known to the writer taken verbatim, other package files read),
publish the repodata, delete what left, save the state. The order is what makes a
kill at any instant harmless: nothing is named before it is durable, nothing is
deleted while a published record still names it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from conda_ferry.gateways import Gateway, is_temp
from conda_ferry.index.channel import ChannelEntry, IndexOptions, SubdirSummary, index_subdir
from conda_ferry.index.subdir import SubdirView

from .state import STATE_DIR, SubdirState

Record = dict[str, Any]


def choose_records(
    wanted: dict[str, Record],
    ready: Collection[str],
    published: dict[str, Record],
    present: Collection[str],
) -> dict[str, Record]:
    """The records to publish: what the writer wants, where the file is known good.

    ``ready``: files known to hold exactly the bytes their wanted record describes
    (verified on arrival, or unchanged since they were). A wanted file that is not
    ready but present keeps its published record: the file is still the old one, and
    the old record is still true of it. Anything else is left out: never a record
    whose file is missing or unverified.
    """
    chosen: dict[str, Record] = {}
    for filename, record in wanted.items():
        if filename in ready:
            chosen[filename] = record
        elif filename in present and filename in published:
            chosen[filename] = published[filename]
    return chosen


@dataclass
class Commit:
    """What a writer hands over once its package files are in place."""

    known: dict[str, Record]  # records published verbatim (their files are ready)
    managed: set[str]  # files the mirror owns from upstream (the state's list)
    remove: list[str] = field(default_factory=list)  # deleted after publishing
    extras: dict[str, Record] = field(default_factory=dict)  # channeldata input by file

    @property
    def skip(self) -> set[str]:
        """Mirror-owned files not to be published: on their way in or out. They are
        never read as custom packages."""
        return self.managed - self.known.keys()


def commit_subdir(
    target: Gateway,
    view: SubdirView,
    commit: Commit,
    state: SubdirState,
    options: IndexOptions,
) -> tuple[SubdirSummary, list[ChannelEntry]]:
    target.flush()  # every package durable before any repodata names it
    sweep_temps(target, STATE_DIR, f".{view.subdir}.json.")
    result = index_subdir(target, view, options, commit.known, commit.skip, commit.extras)
    for filename in commit.remove:
        target.delete(f"{view.subdir}/{filename}")
    state.upstream_files = sorted(commit.managed - set(commit.remove))
    gone = commit.known.keys() | set(commit.remove)  # published or deleted: no more news
    state.verified = {f: sha for f, sha in state.verified.items() if f not in gone}
    state.save(target)
    return result


def sweep_temps(target: Gateway, directory: str, prefix: str) -> None:
    """Remove temp files a killed writer left in ``directory`` whose names start with
    ``prefix`` (the caller holds the lock that covers those files)."""
    for info in target.files(directory):
        if is_temp(info.name) and info.name.startswith(prefix):
            target.delete(info.path)


def mirrored(view: SubdirView, state: SubdirState) -> Commit:
    """A re-index that changes no package: mirrored records stay verbatim (their
    upstream hot-fixes included), every other package file is read."""
    managed = set(state.upstream_files)
    known = {fn: r for fn, r in view.published.items() if fn in managed and fn in view.packages}
    return Commit(known, managed)
