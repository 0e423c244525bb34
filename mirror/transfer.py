"""A transfer: copied here, or shared with worker processes, one per core,
when it is large enough to be worth them (copiers.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from conda_ferry.gateways import Copied, FileInfo

from .copiers import Helpers
from .copying import Landed, Route, copy_all
from .progress import Progress


class TransferResult(msgspec.Struct):
    done: dict[str, FileInfo] = {}  # file name -> as written
    failed: dict[str, str] = {}


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def transfer(
    route: Route,
    items: Mapping[str, Mapping[str, Any]],
    what: str,
    jobs: int,
    progress: Progress,
    landed: Landed = lambda name, copied: None,
    helpers: Helpers | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> TransferResult:
    """Copy ``items`` (``what`` they are, for the progress shown); ``landed`` hears of
    each verified file as it arrives.

    ``helpers`` copy a transfer worth their start; ``meanwhile`` runs once they have
    their first files (not at all without them). Interrupted (Ctrl-C, SIGTERM),
    the copies in flight are abandoned at their next chunk, their temp files
    removed, and nothing more is started."""
    result = TransferResult()
    lock = threading.Lock()  # files land from a pool's threads

    def arrived(filename: str, copied: Copied) -> None:
        with lock:
            result.done[filename] = copied.info
        landed(filename, copied)  # journaled the moment it is true
        progress.file_done(filename, True)

    def failed(filename: str, why: str) -> None:
        with lock:
            result.failed[filename] = why  # named once, in the run's summary
        progress.file_done(filename, False)

    total = sum(int(r.get("size") or 0) for r in items.values())
    progress.start(what, len(items), total)
    # the largest first: a large file left to the end keeps one worker busy while the
    # others have nothing left to take
    work = sorted(items.items(), key=lambda item: (-int(item[1].get("size") or 0), item[0]))
    if helpers is not None and helpers.worth(len(items), total):
        helpers.share(route, work, jobs, progress, arrived, failed, meanwhile)
    else:
        copy_all(route, work, jobs, progress, arrived, failed)
    return result
