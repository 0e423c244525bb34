"""Copy many files from one gateway to another in this process, each verified before
it appears.

Each package streams through a digest check straight into an atomic write: a file
exists at its final name on the target only if its size, sha256 (or, lacking one,
md5) matched the upstream record.

Two ways to keep ``jobs`` transfers in flight, chosen by the source: where one
thread's transfers all progress together (HTTP through libcurl), one thread requests
the next ``jobs`` files ahead and writes them in turn, which spares the lock
handovers of eight threads taking turns at the interpreter for a fraction of a
millisecond of work each (measured: 2,000 small packages in less than half the time);
otherwise a pool of ``jobs`` threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgspec

from conda_ferry.gateways import (
    Copied,
    Expected,
    Gateway,
    GatewayError,
    NotFound,
    copy_file,
    copy_prefetched,
)

from .progress import Progress

INTEGRITY_ATTEMPTS = 2  # a body corrupted in transit is fetched once more
GONE_UPSTREAM = "the upstream's index names it, but it is not there; a later run tries again"

Landed = Callable[[str, Copied], None]
Failed = Callable[[str, str], None]


def expected(record: Mapping[str, Any]) -> Expected:
    """What a record promises about its file's bytes."""
    size = record.get("size")
    return Expected(
        int(size) if size is not None else None, record.get("sha256"), record.get("md5")
    )


class Route(msgspec.Struct, frozen=True):
    """Where a transfer's files come from and go to."""

    source: Gateway
    source_dir: str  # prefix of a file's name upstream: "linux-64/", or "" for package_url
    target: Gateway
    target_dir: str  # prefix of its name on the target: "linux-64/", or "" (names say it)


Work = Iterable[tuple[str, Mapping[str, Any]]]  # file name and its upstream record


class _Cancelled(Exception):
    """Raised inside a worker's copy so that its atomic write is abandoned."""


def copy_all(
    route: Route, work: Work, jobs: int, progress: Progress, arrived: Landed, failed: Failed
) -> None:
    """Copy ``work`` in this process, ``jobs`` at a time, as it comes (``work`` may
    be handed out while it runs); each file goes to ``arrived`` or ``failed``."""
    stop = threading.Event()
    source, target = route.source, route.target

    def advance(count: int) -> None:
        if stop.is_set():
            raise _Cancelled
        progress.advance(count)

    def copy(filename: str, record: Mapping[str, Any]) -> None:
        if stop.is_set():
            raise _Cancelled
        source_path = f"{route.source_dir}{filename}"
        path, expect = f"{route.target_dir}{filename}", expected(record)
        try:
            copied = copy_prefetched(source, source_path, target, path, expect, durable=False)
            if copied is not None:
                progress.advance(copied.size)  # landed: reported even if stopping now
            else:
                copied = copy_file(
                    source,
                    source_path,
                    target,
                    path,
                    expect,
                    durable=False,  # the caller flushes once, before publishing
                    attempts=INTEGRITY_ATTEMPTS,
                    progress=advance,
                )
        except NotFound as exc:
            if exc.url == source.display(source_path):  # named by the index just read
                exc.hint = GONE_UPSTREAM
            failed(filename, str(exc))
        except GatewayError as exc:
            failed(filename, str(exc))
        else:
            arrived(filename, copied)

    jobs = max(1, jobs)
    pool = None
    try:
        if source.streams_progress_together:  # see _requested_ahead
            for filename, record in _requested_ahead(route, work, jobs):
                copy(filename, record)
        else:
            pool = ThreadPoolExecutor(max_workers=jobs)
            pending: deque[Future[None]] = deque()
            for filename, record in work:  # never more than a few queued: see Work
                pending.append(pool.submit(copy, filename, record))
                if len(pending) >= 2 * jobs:
                    pending.popleft().result()
            for future in pending:
                future.result()
    except BaseException:
        stop.set()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # temp files gone, none started


def _requested_ahead(route: Route, work: Work, jobs: int) -> Iterator[tuple[str, Any]]:
    """``work`` in order, with the next ``jobs`` files already requested from a
    source whose transfers progress together (one thread reads each in turn)."""
    window: deque[tuple[str, Any]] = deque()
    for item in work:
        route.source.prefetch([f"{route.source_dir}{item[0]}"])
        window.append(item)
        if len(window) > jobs:
            yield window.popleft()
    while window:
        yield window.popleft()
