"""Copy packages upstream -> target, many at once, verified before they appear.

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
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from conda_ferry.gateways import Copied, Expected, FileInfo, Gateway, GatewayError, copy_file

from .progress import Progress

INTEGRITY_ATTEMPTS = 2  # a body corrupted in transit is fetched once more


@dataclass
class TransferResult:
    done: dict[str, FileInfo] = field(default_factory=dict)  # file name -> as written
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0


def expected(record: Mapping[str, Any]) -> Expected:
    """What a record promises about its file's bytes."""
    size = record.get("size")
    return Expected(
        int(size) if size is not None else None, record.get("sha256"), record.get("md5")
    )


class _Cancelled(Exception):
    """Raised inside a worker's copy so that its atomic write is abandoned."""


Outcome = tuple[str, Copied | str]  # file name, and what landed or why not


def transfer(
    source: Gateway,
    source_dir: str,
    target: Gateway,
    subdir: str,
    items: Mapping[str, Mapping[str, Any]],
    jobs: int,
    progress: Progress,
    landed: Callable[[str, Copied], None] = lambda name, copied: None,
) -> TransferResult:
    """Copy ``items``; ``landed`` hears of each verified file as it arrives.

    Interrupted (Ctrl-C, SIGTERM), the copies in flight are abandoned at their next
    chunk, their temp files removed, and nothing more is started."""
    result = TransferResult()
    progress.start(subdir, len(items), sum(int(r.get("size") or 0) for r in items.values()))
    stop = threading.Event()

    def advance(count: int) -> None:
        if stop.is_set():
            raise _Cancelled
        progress.advance(count)

    def copy(filename: str) -> Outcome:
        if stop.is_set():
            raise _Cancelled
        try:
            copied = copy_file(
                source,
                f"{source_dir}{filename}",
                target,
                f"{subdir}/{filename}",
                expected(items[filename]),
                durable=False,  # the caller flushes once, before publishing
                attempts=INTEGRITY_ATTEMPTS,
                progress=advance,
            )
        except GatewayError as exc:
            return filename, str(exc)
        landed(filename, copied)  # journaled the moment it is true
        return filename, copied

    names = sorted(items)
    one_thread = source.streams_progress_together  # see _requested_ahead
    pool = None if one_thread else ThreadPoolExecutor(max_workers=max(1, jobs))
    outcomes = (
        pool.map(copy, names)
        if pool is not None
        else _requested_ahead(source, source_dir, names, max(1, jobs), copy)
    )
    try:
        for filename, outcome in outcomes:
            progress.file_done(filename, not isinstance(outcome, str))
            if isinstance(outcome, str):  # named once, in the run's summary
                result.failed[filename] = outcome
            else:
                result.done[filename] = outcome.info
                result.bytes += outcome.size
    except BaseException:
        stop.set()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # temp files gone, none started
    return result


def _requested_ahead(
    source: Gateway,
    source_dir: str,
    names: list[str],
    jobs: int,
    copy: Callable[[str], Outcome],
) -> Iterator[Outcome]:
    """Copy ``names`` in one thread, the next ``jobs`` files already requested."""
    source.prefetch(f"{source_dir}{n}" for n in names[:jobs])
    for i, name in enumerate(names):
        if i + jobs < len(names):  # the window moves on by one
            source.prefetch([f"{source_dir}{names[i + jobs]}"])
        yield copy(name)
