"""What a mirror remembers between runs, one small JSON file per subdir on the target.

Per subdir, so that subdirs of one job can sync from different hosts into one
target. It holds validators and names, never credentials; losing it costs one
full comparison, never correctness.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from conda_ferry.gateways import Gateway, LockInfo, NotFound, is_temp

STATE_DIR = ".ferry"
log = logging.getLogger("ferry.state")


def subdir_lock(gateway: Gateway, subdir: str) -> contextlib.AbstractContextManager[LockInfo]:
    """The one lock every writer of a subdir takes: sync, index, publish, import."""
    return gateway.lock(f"{subdir}/.ferry.lock")


@contextlib.contextmanager
def subdir_locks(gateway: Gateway, subdirs: Iterable[str]) -> Iterator[None]:
    """Several subdirs' locks, always taken in the same order (no deadlock)."""
    with contextlib.ExitStack() as stack:
        for subdir in sorted(set(subdirs)):
            stack.enter_context(subdir_lock(gateway, subdir))
        yield


@dataclass
class SubdirState:
    subdir: str
    etag: str | None = None
    last_modified: str | None = None
    variant: str | None = None  # which upstream file answered: repodata.json(.zst)
    fingerprint: str | None = None  # the job config that produced the mirror
    complete: bool = False  # the last run published everything it planned
    upstream_files: list[str] = field(default_factory=list)  # files sync manages
    # name -> sha256 of files verified as they landed, not yet published: the work an
    # interrupted run leaves for the next one to adopt instead of fetching again
    verified: dict[str, str] = field(default_factory=dict)
    # file (relative to the subdir) -> when it may be deleted: packages and shards no
    # published file names any more, kept for clients with yesterday's index
    due: dict[str, float] = field(default_factory=dict)
    last_run: dict[str, Any] = field(default_factory=dict)  # the last run that did work
    checked: str | None = None  # when a run last found upstream unchanged
    # what the subdir publishes, for the channel page: records, packages, bytes
    counts: dict[str, int] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)  # page -> digest of what is written
    # name -> "key sha256" of its shard: a name whose records are unchanged keeps it
    shards: dict[str, str] = field(default_factory=dict)
    # set by `ferry snapshot restore --hold`: sync refuses the subdir until released
    hold: dict[str, str] = field(default_factory=dict)
    _saved: bytes | None = field(default=None, repr=False, compare=False)
    _swept: bool = field(default=False, repr=False, compare=False)

    @staticmethod
    def path(subdir: str) -> str:
        return f"{STATE_DIR}/{subdir}.json"

    @classmethod
    def load(cls, gateway: Gateway, subdir: str) -> SubdirState:
        """The state saved, or a fresh one where none was or it is damaged (each of
        its fields checked: a state file is rewritten by hand or by a disk, too)."""
        try:
            data = gateway.read_bytes(cls.path(subdir))
            state = msgspec.json.decode(data, type=cls)
        except NotFound:
            return cls(subdir)
        except msgspec.MsgspecError as exc:
            log.warning(
                "%s: unreadable (%s); starting afresh: the next run compares every file",
                gateway.display(cls.path(subdir)),
                exc,
            )
            return cls(subdir)
        state.subdir, state._saved, state._swept = subdir, data, False
        return state

    def _bytes(self) -> bytes:
        # saved every few seconds during a transfer, with a name per file: no deep copy
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__ if k[0] != "_"}
        return orjson.dumps(fields, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    def save(self, gateway: Gateway) -> None:
        """Write the state unless it is unchanged: a no-op run writes nothing."""
        if not self._swept:  # once a run: a transfer saves every few seconds
            # what a writer killed while saving left (any writer: sync, a quiet night,
            # index, snapshots), under the subdir lock every caller holds
            sweep_temps(gateway, STATE_DIR, f".{self.subdir}.json.")
            self._swept = True
        data = self._bytes()
        if self._saved is None and data == SubdirState(self.subdir)._bytes():
            return  # a channel sync never touched needs no state
        if data != self._saved:
            gateway.write_bytes(self.path(self.subdir), data)
            self._saved = data


def sweep_temps(target: Gateway, directory: str, prefix: str | tuple[str, ...]) -> None:
    """Remove temp files a killed writer left in ``directory`` whose names start with
    ``prefix`` (or any of them; the caller holds the lock that covers those files)."""
    for info in target.files(directory):
        if is_temp(info.name) and info.name.startswith(prefix):
            target.delete(info.path)
