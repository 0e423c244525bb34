"""Copy packages upstream -> target with a worker pool, verified before they appear.

Each package streams through a digest check straight into an atomic write: a file
exists at its final name on the target only if its size, sha256 and md5 matched
the upstream record.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from conda_ferry.gateways import Gateway, GatewayError, IntegrityError, VerifyingReader
from conda_ferry.gateways.streams import RawStream

from .progress import Progress

log = logging.getLogger("ferry.transfer")
INTEGRITY_ATTEMPTS = 2  # a body corrupted in transit is fetched once more


@dataclass
class TransferResult:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0


class _Counting(RawStream):
    def __init__(self, stream: BinaryIO, progress: Progress) -> None:
        super().__init__()
        self._stream, self._progress = stream, progress

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self._stream.read(size)
        self._progress.advance(len(data))
        return data


def copy_package(
    source: Gateway,
    source_path: str,
    target: Gateway,
    target_path: str,
    record: dict[str, Any],
    progress: Progress,
) -> int:
    size = record.get("size")
    for attempt in range(INTEGRITY_ATTEMPTS):
        stream = VerifyingReader(
            source.open_read(source_path),
            source.display(source_path),
            int(size) if size is not None else None,
            record.get("sha256"),
            record.get("md5"),
        )
        try:
            with stream:
                # not flushed one by one: the caller flushes once, before publishing
                target.write_atomic(
                    target_path,
                    _Counting(stream.as_binary(), progress).as_binary(),
                    durable=False,
                )
            return stream.count
        except IntegrityError:
            if attempt + 1 >= INTEGRITY_ATTEMPTS:
                raise
            log.warning("%s failed its check; fetching it again", source.display(source_path))
    raise AssertionError("unreachable")


def transfer(
    source: Gateway,
    source_dir: str,
    target: Gateway,
    subdir: str,
    items: dict[str, dict[str, Any]],
    jobs: int,
    progress: Progress,
) -> TransferResult:
    result = TransferResult()
    progress.start(subdir, len(items), sum(int(r.get("size") or 0) for r in items.values()))

    def one(filename: str) -> tuple[str, int | str]:
        try:
            return filename, copy_package(
                source,
                f"{source_dir}{filename}",
                target,
                f"{subdir}/{filename}",
                items[filename],
                progress,
            )
        except GatewayError as exc:
            return filename, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for filename, outcome in pool.map(one, sorted(items)):
            ok = isinstance(outcome, int)
            progress.file_done(filename, ok)
            if isinstance(outcome, int):
                result.done.append(filename)
                result.bytes += outcome
            else:
                log.error("not published: %s", outcome)
                result.failed[filename] = outcome
    return result
