"""The one interface every adapter implements, and the plain models it speaks.

Callers name files by paths relative to the gateway's root URL, so the same sync or
index code runs unchanged over a local directory, a bucket or an FTP server.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import BinaryIO

from .errors import GatewayError, LockHeld, NotFound, ReadOnlyError
from .retry import RetryPolicy
from .streams import CHUNK
from .urls import clean_relative, join, redact

log = logging.getLogger("ferry.gateways")


@dataclass(frozen=True)
class FileInfo:
    """What a listing or a stat knows about one file; ``path`` is relative to the root."""

    path: str
    size: int
    mtime: float | None = None
    etag: str | None = None
    is_dir: bool = False

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class Fetched:
    """A changed file: its new validators and a stream of its bytes (caller closes)."""

    info: FileInfo
    stream: BinaryIO
    last_modified: str | None = None

    def __enter__(self) -> Fetched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


@dataclass(frozen=True)
class GatewayOptions:
    """Knobs every adapter understands; each ignores those its protocol lacks."""

    timeout: float = 30.0
    verify_tls: bool = True
    ca_bundle: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # s3
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    # sftp
    key_file: str | None = None
    known_hosts: str | None = None
    insecure_skip_host_key: bool = False
    # ftp
    ftps: bool = False


def stat_etag(size: int, mtime: float | None) -> str:
    """A validator for protocols without ETags: changes whenever size or mtime does."""
    return f'W/"{size:x}-{int((mtime or 0) * 1e6):x}"'


@dataclass(frozen=True)
class LockInfo:
    host: str
    pid: int
    started: float
    expires: float
    owner: str = "ferry"

    @classmethod
    def mine(cls, ttl: float) -> LockInfo:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, now + ttl)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LockInfo | None:
        try:
            raw = json.loads(data)
            return cls(
                str(raw["host"]),
                int(raw["pid"]),
                float(raw["started"]),
                float(raw["expires"]),
                str(raw.get("owner", "ferry")),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def stale_reason(self) -> str | None:
        """Why this lock may be taken over, or None while its holder may be alive."""
        if time.time() > self.expires:
            return "it expired"
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return f"process {self.pid} is gone"
            except PermissionError:
                return None
        return None

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"held by pid {self.pid} on {self.host} since {started}"


class Gateway(abc.ABC):
    """A file tree reached through one protocol, rooted at ``url``."""

    scheme = ""
    writable = True

    def __init__(self, url: str, options: GatewayOptions | None = None) -> None:
        self.url = url
        self.options = options or GatewayOptions()

    # -- naming -----------------------------------------------------------------
    def display(self, path: str = "") -> str:
        """The URL of ``path`` fit for logs and errors: credentials removed."""
        return redact(join(self.url, path)) if path else redact(self.url)

    def _rel(self, path: str) -> str:
        return clean_relative(path, self.display())

    def _require_writable(self, path: str) -> None:
        if not self.writable:
            raise ReadOnlyError(self.display(path), "cannot write over this protocol")

    # -- reading ----------------------------------------------------------------
    @abc.abstractmethod
    def info(self, path: str) -> FileInfo:
        """Stat one file; raises :class:`NotFound`."""

    @abc.abstractmethod
    def list(self, path: str = "", recursive: bool = False) -> list[FileInfo]:
        """Entries below ``path``; their ``path`` stays relative to the root."""

    def exists(self, path: str) -> bool:
        try:
            self.info(path)
        except NotFound:
            return False
        return True

    @abc.abstractmethod
    def open_read(self, path: str, offset: int = 0) -> BinaryIO:
        """A stream from ``offset``; transient breaks resume transparently."""

    def checksum(self, path: str) -> tuple[int, str]:
        """Size and sha256 of a stored file, read as a stream."""
        sha, size = hashlib.sha256(), 0
        with self.open_read(path) as stream:
            while chunk := stream.read(CHUNK):
                sha.update(chunk)
                size += len(chunk)
        return size, sha.hexdigest()

    def read_bytes(self, path: str) -> bytes:
        """The whole file: only for small files such as state and repodata."""
        with self.open_read(path) as stream:
            return stream.read()

    def fetch_if_changed(
        self, path: str, etag: str | None = None, last_modified: str | None = None
    ) -> Fetched | None:
        """The file unless it still matches the validators (then None, no body).

        Protocols without conditional requests compare a stat-derived ETag.
        """
        info = self.info(path)
        if etag is not None and info.etag == etag:
            return None
        return Fetched(info, self.open_read(path))

    # -- writing ----------------------------------------------------------------
    @abc.abstractmethod
    def write_atomic(
        self, path: str, stream: BinaryIO, size: int | None = None, durable: bool = True
    ) -> FileInfo:
        """Store ``stream`` at ``path`` so that readers see the old or new file only.

        ``durable=False`` may skip per-file flushes to stable storage; the caller then
        calls :meth:`flush` once before publishing anything that refers to the files.
        """

    def write_bytes(self, path: str, data: bytes, durable: bool = True) -> FileInfo:
        return self.write_atomic(path, io.BytesIO(data), len(data), durable)

    def flush(self) -> None:  # noqa: B027 - remote stores are durable once they answer
        """Make every earlier non-durable write durable."""

    def abort_incomplete(self, path: str, older_than: float = 60.0) -> int:
        """Drop writes below ``path`` that a killed run left unfinished and invisible
        (S3 multipart uploads, which cost storage until aborted); returns how many.
        Temp files elsewhere are visible and swept by the caller."""
        return 0

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Remove one file; a missing file is not an error (deletes are retried)."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` over ``dst`` (replacing it)."""

    @abc.abstractmethod
    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` holding ``data`` only if it does not exist; False if it does."""

    def read_lock(self, path: str) -> bytes:
        """The record of whoever holds the lock at ``path``."""
        return self.read_bytes(path)

    def _remove_lock(self, path: str) -> None:
        self.delete(path)

    # -- locking ----------------------------------------------------------------
    def _why_stale(self, path: str) -> str | None:
        """Why the lock at ``path`` may be taken over; None if it vanished meanwhile.

        Raises :class:`LockHeld` while its holder may be alive."""
        try:
            held = LockInfo.from_bytes(self.read_lock(path))
            age = 0.0 if held else time.time() - (self.info(path).mtime or time.time())
        except NotFound:
            return None
        if held is None:  # being written this instant, or a run killed mid-create
            if age < 300:
                raise LockHeld(self.display(path), "locked (its owner record is unreadable)")
            return "its owner record is unreadable and old"
        reason = held.stale_reason()
        if reason is None:
            raise LockHeld(self.display(path), f"locked, {held.describe()}")
        return reason

    @contextlib.contextmanager
    def lock(self, path: str, ttl: float = 6 * 3600) -> Iterator[LockInfo]:
        """Hold ``path`` as a lock for the duration; raises :class:`LockHeld`.

        A lock whose holder is provably dead (same host, no such pid) or whose
        expiry passed is taken over with a warning, so that a run killed by the
        OOM killer or a reboot does not block every later cron run.
        """
        self._require_writable(path)
        mine = LockInfo.mine(ttl)
        for _ in range(3):
            if self._create_exclusive(path, mine.to_bytes()):
                break
            reason = self._why_stale(path)
            if reason is not None:
                log.warning("%s: taking over a stale lock (%s)", self.display(path), reason)
                self._remove_lock(path)
        else:
            raise LockHeld(self.display(path), "another run took the lock first")
        try:
            yield mine
        finally:
            try:
                self._remove_lock(path)
            except GatewayError as exc:
                log.warning("could not release lock: %s", exc)

    def close(self) -> None:  # noqa: B027 - most adapters hold nothing to release
        """Release connections; the gateway may not be used afterwards."""

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
