"""Byte streams that the adapters hand out: resuming, verifying, and their base.

Transient failures on long transfers are the rule on real networks; starting a
multi-GB download over because of one reset wastes hours, so streams reopen at the
byte already received instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable
from typing import BinaryIO, cast

import msgspec

from .errors import IntegrityError, TooSlow, TransientError, network_problem
from .retry import RetryPolicy

log = logging.getLogger("ferry.gateways")
CHUNK = 1 << 20
# Real repodata compresses 4-15x (zstd or gzip); a stream that expands far beyond
# that is a decompression bomb, refused before it can fill the memory.
MAX_EXPANSION = 50
EXPANSION_FLOOR = 64 << 20


def expansion_limit(compressed: int) -> int:
    """How many bytes ``compressed`` bytes may legitimately expand to."""
    return EXPANSION_FLOOR + MAX_EXPANSION * compressed


class RawStream(io.RawIOBase):
    """A readable stream defined by ``read`` alone."""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def as_binary(self) -> BinaryIO:
        return cast(BinaryIO, self)


class GuardedStream(RawStream):
    """A protocol's byte source whose network failures surface as :class:`TransientError`,
    the one kind :class:`ResumingReader` resumes after."""

    def __init__(
        self,
        read: Callable[[int], bytes],
        close: Callable[[], None],
        url: str,
        network_errors: tuple[type[BaseException], ...],
    ) -> None:
        super().__init__()
        self._read, self._close, self._url = read, close, url
        self._errors = network_errors

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        try:
            return self._read(size) or b""
        except self._errors as exc:
            raise TransientError(self._url, f"connection broke: {network_problem(exc)}") from None

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._close()
        finally:
            super().close()  # once only, even if closing failed: the source is gone


class Pace(msgspec.Struct, frozen=True, gc=False):
    """The slowest a transfer may go: an idle timeout alone lets a server that sends
    one byte a second hold a run, and its lock, for ever."""

    min_rate: float = 0.0  # bytes per second, averaged since the transfer began
    grace: float = 30.0  # seconds before the average counts

    def check(self, received: int, started: float, what: str) -> None:
        elapsed = time.monotonic() - started
        if self.min_rate and elapsed > self.grace and received < self.min_rate * elapsed:
            raise TooSlow(
                what,
                f"{received} bytes in {elapsed:.0f}s, below min_rate {self.min_rate:g} bytes/s",
            )


class RateCap:
    """A bandwidth cap shared by every transfer of one gateway (a token bucket that
    lets one chunk through, then makes the next wait its turn)."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._rate, self._clock, self._sleep = rate, clock, sleep
        self._lock = threading.Lock()
        self._free_at = clock()

    def take(self, count: int) -> None:
        with self._lock:
            now = self._clock()
            start = max(self._free_at, now)
            self._free_at = start + count / self._rate
        if start > now:
            self._sleep(start - now)


class ResumingReader(RawStream):
    """A read-only stream that reopens at its current offset after a transient error.

    ``opener(offset)`` returns a raw stream positioned at ``offset`` without retrying
    on its own: this class is the one retry layer, so attempts stay bounded. It raises
    :class:`TransientError` for failures worth another try, and so must the stream.
    """

    def __init__(
        self,
        opener: Callable[[int], BinaryIO],
        policy: RetryPolicy,
        what: str,
        offset: int = 0,
        first: BinaryIO | None = None,
        pace: Pace | None = None,
        cap: RateCap | None = None,
    ) -> None:
        super().__init__()
        self._pace, self._started, self._first_offset = pace, time.monotonic(), offset
        self._cap = cap
        self._opener = opener
        self._policy = policy
        self._what = what
        self._offset = offset
        self._failures = 0
        self._stream: BinaryIO | None = first  # a body already opened by the caller
        self._retrying(lambda: b"")  # open now: a missing file fails here, not later

    def tell(self) -> int:
        return self._offset

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self._retrying(lambda: self._stream.read(size) or b"")  # type: ignore[union-attr]
        if data:
            self._offset += len(data)
            self._failures = 0  # progress: the budget is per stall, not per file
            if self._cap is not None:
                self._cap.take(len(data))
            if self._pace is not None:
                self._pace.check(self._offset - self._first_offset, self._started, self._what)
        return data

    def _retrying(self, step: Callable[[], bytes]) -> bytes:
        while True:
            try:
                if self._stream is None:
                    self._stream = self._opener(self._offset)
                return step()
            except TransientError as exc:
                self._failures += 1
                self._drop()
                if self._failures >= self._policy.attempts:
                    raise
                pause = self._policy.delay(self._failures - 1, exc.retry_after)
                log.info(
                    "%s: %s at byte %d; resuming in %.1fs",
                    self._what,
                    exc.message,
                    self._offset,
                    pause,
                )
                time.sleep(pause)

    def _drop(self) -> None:
        if self._stream is not None:
            # closing a broken stream may fail again; it is gone anyway
            with contextlib.suppress(Exception):
                self._stream.close()
            self._stream = None

    def close(self) -> None:
        self._drop()
        super().close()


def bytes_problem(
    data: bytes, size: int | None, sha256: str | None, md5: str | None
) -> tuple[str | None, str]:
    """What :class:`VerifyingReader` would find wrong with ``data`` at its end (None:
    nothing), and its sha256: the same check for bytes already whole, without a stream
    around them (a small package fetched ahead: a third of its check's time)."""
    expect_sha256, expect_md5 = _expected(sha256, md5)
    digest = hashlib.sha256(data).hexdigest()
    md5_digest = hashlib.md5(data).hexdigest() if expect_md5 else None
    return _problem(len(data), size, digest, expect_sha256, md5_digest, expect_md5), digest


def _expected(sha256: str | None, md5: str | None) -> tuple[str | None, str | None]:
    """The digests to compare, in lower case; md5 only where no sha256 is known, as
    conda and rattler do: next to a matching sha256 it proves nothing more, and it
    costs twice the CPU of sha256 per byte."""
    if sha256:
        return sha256.lower(), None
    return None, md5.lower() if md5 else None


def _problem(
    count: int,
    size: int | None,
    sha256: str,
    expect_sha256: str | None,
    md5: str | None,
    expect_md5: str | None,
) -> str | None:
    if size is not None and count != size:
        return f"got {count} bytes, expected {size}"
    if expect_sha256 and sha256 != expect_sha256:
        return "sha256 does not match"
    if expect_md5 and md5 != expect_md5:
        return "md5 does not match"
    return None


class VerifyingReader(RawStream):
    """Passes bytes through and fails at end of stream if size or sha256 differ.

    Because every ``write_atomic`` reads to the end before it publishes, a mismatch
    aborts the write and the destination keeps its old content. md5 is checked only
    where no sha256 is known (:func:`_expected`).
    """

    def __init__(
        self,
        stream: BinaryIO,
        url: str,
        size: int | None = None,
        sha256: str | None = None,
        md5: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._progress = progress
        self._url = url
        self._size = size
        self._expect_sha256, self._expect_md5 = _expected(sha256, md5)
        self.sha256 = hashlib.sha256()
        self._md5 = hashlib.md5() if self._expect_md5 else None
        self.count = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self._stream.read(size)
        if data:
            self.count += len(data)
            self.sha256.update(data)
            if self._md5 is not None:
                self._md5.update(data)
            if self._progress is not None:
                self._progress(len(data))
            if self._size is not None and self.count > self._size:
                raise IntegrityError(self._url, f"more than the expected {self._size} bytes")
            return data
        self._check()
        return b""

    def _check(self) -> None:
        md5 = self._md5.hexdigest() if self._md5 is not None else None
        problem = _problem(
            self.count,
            self._size,
            self.sha256.hexdigest(),
            self._expect_sha256,
            md5,
            self._expect_md5,
        )
        if problem:
            raise IntegrityError(self._url, problem)

    def close(self) -> None:
        self._stream.close()
        super().close()
