"""The one interface every adapter implements, and the plain models it speaks.

Callers name files by paths relative to the gateway's root URL, so the same sync or
index code runs unchanged over a local directory, a bucket or an FTP server.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

import msgspec

from .errors import GatewayError, LockHeld, NotFound, ReadOnlyError
from .retry import RetryPolicy, call
from .streams import CHUNK, Pace, RateCap, ResumingReader
from .urls import clean_relative, join, redact

T = TypeVar("T")

log = logging.getLogger("ferry.gateways")
LOCK_TTL = 300.0  # seconds a lock outlives its holder's last heartbeat


class FileInfo(msgspec.Struct, frozen=True, gc=False):
    """What a listing or a stat knows about one file; ``path`` is relative to the root.

    A Struct (like every plain record here) rather than a dataclass: built in C, a
    listing of 600,000 files makes them in 0.14 s instead of a frozen dataclass's
    1.4 s, the GC does not track them, and the class costs no start-up time."""

    path: str
    size: int
    mtime: float | None = None
    etag: str | None = None
    is_dir: bool = False

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Fetched(msgspec.Struct):
    """A changed file: its new validators and a stream of its bytes (caller closes)."""

    info: FileInfo
    stream: BinaryIO
    last_modified: str | None = None

    def __enter__(self) -> Fetched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


def option(
    default: Any,
    help: str,
    protocols: tuple[str, ...] = (),
    kind: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """One user-facing knob, declared once: the job file's keys and the command line's
    options are both made from these fields, so their names cannot drift apart.

    ``protocols``: the schemes it applies to (empty: all); ``kind``: ``file`` for a
    path that must exist; ``minimum``/``maximum``: bounds of a number.
    """
    meta = {"help": help, "protocols": protocols, "kind": kind}
    return field(default=default, metadata={**meta, "minimum": minimum, "maximum": maximum})


TLS = ("http", "https", "s3", "ftps")


@dataclass(frozen=True)
class GatewayOptions:
    """Knobs every adapter understands; each ignores those its protocol lacks."""

    timeout: float = option(
        30.0, "Seconds before a silent connection counts as failed.", minimum=0.001, maximum=86400
    )
    retries: int = option(
        5, "Attempts at a failing request or transfer before giving up.", minimum=1
    )
    retry_delay: float = option(
        0.5, "Seconds before the first retry; doubles each time.", minimum=0
    )
    verify_tls: bool = option(True, "Verify TLS certificates.", TLS)
    ca_bundle: str | None = option(None, "CA certificates for TLS.", TLS, "file")
    endpoint_url: str | None = option(None, "S3 endpoint [default: AWS_ENDPOINT_URL].", ("s3",))
    region: str | None = option(None, "S3 region.", ("s3",))
    profile: str | None = option(None, "AWS profile for S3 credentials.", ("s3",))
    key_file: str | None = option(None, "SSH private key.", ("sftp",), "file")
    known_hosts: str | None = option(
        None, "known_hosts file [default: ~/.ssh/known_hosts].", ("sftp",), "file"
    )
    insecure_host_key: bool = option(False, "Accept any SSH host key (insecure).", ("sftp",))
    openssh: bool = option(
        True,
        "SFTP through the system's ssh (its config, agent and jump hosts) where it is "
        "installed and the URL holds no password; off: paramiko's own SSH.",
        ("sftp",),
    )
    max_rate: float = option(
        0.0,
        "Bytes per second this gateway may read at most, all transfers together (0: no cap).",
        minimum=0,
    )
    min_rate: float = option(
        1024.0,
        "Bytes per second, averaged since a transfer began, below which it is abandoned "
        "once 'timeout' seconds have passed (0: never).",
        minimum=0,
    )

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retries, base_delay=self.retry_delay)


def stat_etag(size: int, mtime: float | None) -> str:
    """A validator for protocols without ETags: changes whenever size or mtime does."""
    return f'W/"{size:x}-{int((mtime or 0) * 1e6):x}"'


class LockInfo(msgspec.Struct, frozen=True):
    host: str
    pid: int
    started: float
    expires: float

    @classmethod
    def mine(cls, ttl: float) -> LockInfo:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, now + ttl)

    def to_bytes(self) -> bytes:
        return json.dumps(msgspec.structs.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LockInfo | None:
        """The record, or None when it is not one a live ferry could have written
        (then the lock is aged by its file's mtime)."""
        try:
            raw = json.loads(data)
            info = cls(
                str(raw["host"]),
                int(raw["pid"]),
                float(raw["started"]),
                float(raw["expires"]),
            )
        except (ValueError, KeyError, TypeError, OverflowError):
            return None
        sane = 0 < info.pid < 1 << 31 and all(
            math.isfinite(t) and 0 <= t < 1e11 for t in (info.started, info.expires)
        )
        return info if sane else None

    def stale_reason(self) -> str | None:
        """Why this lock may be taken over, or None while its holder may be alive.

        A holder on this host is asked directly, whatever the lock's age: a first
        sync may run for days. One elsewhere is trusted until its expiry, which it
        pushes forward while it runs (see :meth:`Gateway.lock`)."""
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return f"process {self.pid} is gone"
            except PermissionError:
                pass  # alive, another user's
            return None
        if time.time() > self.expires:
            return "it expired"
        return None

    def renewed(self, ttl: float) -> LockInfo:
        return msgspec.structs.replace(self, expires=time.time() + ttl)

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"held by pid {self.pid} on {self.host} since {started}"


class Gateway(abc.ABC):
    """A file tree reached through one protocol, rooted at ``url``.

    Adapters write the primitives (``info``, ``_listdir``, ``_open``, ``write_atomic``,
    ``delete``, ``_create_exclusive``); listing recursively, resuming reads, retrying,
    conditional fetches and locking are done here once, for all of them.
    """

    scheme = ""
    writable = True
    # Transfers one thread has started all move on whenever any of them is read: one
    # thread keeps many in flight (see prefetch). Otherwise each needs a thread.
    streams_progress_together = False

    def __init__(self, url: str, options: GatewayOptions | None = None) -> None:
        self.url = url
        self.options = options or GatewayOptions()
        self._cap = RateCap(self.options.max_rate) if self.options.max_rate else None

    # -- naming -----------------------------------------------------------------
    def display(self, path: str = "") -> str:
        """The URL of ``path`` fit for logs and errors: credentials removed."""
        return join(self._shown, path) if path else self._shown

    @functools.cached_property
    def _shown(self) -> str:
        return redact(self.url)

    def _rel(self, path: str) -> str:
        return clean_relative(path, self.url)  # redacted if it is shown

    def _require_writable(self, path: str) -> None:
        if not self.writable:
            raise ReadOnlyError(self.display(path), "cannot write over this protocol")

    def _retry(self, path: str, fn: Callable[[], T]) -> T:
        """``fn`` with this gateway's retry policy; failures name ``path``."""
        return call(fn, self.options.retry, self.display(path))

    # -- reading ----------------------------------------------------------------
    @abc.abstractmethod
    def info(self, path: str) -> FileInfo:
        """Stat one file; raises :class:`NotFound`."""

    @abc.abstractmethod
    def _listdir(self, path: str) -> list[FileInfo]:
        """The entries of one directory, paths relative to the root; :class:`NotFound`
        when it does not exist."""

    def _walk(self, path: str) -> list[FileInfo]:
        """Every file below ``path``; stores with a flat namespace list it in one go."""
        out: list[FileInfo] = []
        for entry in self._listdir(path):
            out.extend(self._walk(entry.path) if entry.is_dir else [entry])
        return out

    def list(self, path: str = "", recursive: bool = False) -> list[FileInfo]:
        """Entries below ``path``, sorted; their ``path`` stays relative to the root."""
        entries = self._walk(path) if recursive else self._listdir(path)
        return sorted(entries, key=lambda f: f.path)

    def files(self, path: str = "") -> builtins.list[FileInfo]:
        """The files (not directories) directly in ``path``; none if it does not exist."""
        try:
            return [f for f in self.list(path) if not f.is_dir]
        except NotFound:
            return []

    def names(self, path: str = "") -> builtins.list[str]:
        """The names of the files directly in ``path``, sorted; none if it does not
        exist. What :meth:`files` says, where only the names are wanted (an adapter
        may list them without a stat each)."""
        return [f.name for f in self.files(path)]

    def exists(self, path: str) -> bool:
        try:
            self.info(path)
        except NotFound:
            return False
        return True

    @abc.abstractmethod
    def _open(self, path: str, offset: int, version: str | None) -> tuple[BinaryIO, str | None]:
        """A raw stream from ``offset``, without retrying, and the version it serves.

        ``version`` (an ETag seen earlier) asks for that version only: a file that
        changed meanwhile must fail rather than splice two versions together.
        """

    def prefetch(self, paths: Iterable[str]) -> None:  # noqa: B027 - a hint, often unused
        """This thread will soon :meth:`open_read` ``paths`` from their start: adapters
        whose transfers progress together start them now, so that their answers come
        in while earlier files are written."""

    def read_prefetched(self, path: str) -> bytes | None:
        """The whole of ``path``, :meth:`prefetch`-ed, once it has arrived plainly as
        stored and small enough to hold; None (here, always) where it is to be read
        through :meth:`open_read`, which has the retries and the words for what went
        wrong."""
        return None

    def open_read(self, path: str, offset: int = 0) -> BinaryIO:
        """A stream from ``offset``; transient breaks resume transparently."""
        self._rel(path)
        return self._resuming(path, offset)

    def _resuming(
        self, path: str, offset: int = 0, first: BinaryIO | None = None, version: str | None = None
    ) -> BinaryIO:
        pinned = [version]

        def opener(at: int) -> BinaryIO:
            stream, served = self._open(path, at, pinned[0])
            pinned[0] = pinned[0] or served
            return stream

        return ResumingReader(
            opener,
            self.options.retry,
            self.display(path),
            offset,
            first,
            Pace(self.options.min_rate, self.options.timeout),
            self._cap,
        ).as_binary()

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
    def write_atomic(self, path: str, stream: BinaryIO, durable: bool = True) -> FileInfo:
        """Store ``stream`` at ``path`` so that readers see the old or new file only.

        ``durable=False`` may skip per-file flushes to stable storage; the caller then
        calls :meth:`flush` once before publishing anything that refers to the files.
        """

    def write_bytes(self, path: str, data: bytes, durable: bool = True) -> FileInfo:
        return self.write_atomic(path, io.BytesIO(data), durable)

    def write_many(
        self, files: Iterable[tuple[str, bytes]], jobs: int = 8, unseen: bool = False
    ) -> builtins.list[str]:
        """Write many small files, several at once, none durable until :meth:`flush`;
        returns their paths in order. Creating a file costs a journal entry or a round
        trip on every store, so they overlap; ``files`` is consumed as they go.
        ``unseen``: they go into a :meth:`staging_directory`, which no reader sees, so
        an adapter may create each under its name as it fills it."""
        done: builtins.list[str] = []
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            pending: deque[tuple[str, Future[FileInfo]]] = deque()
            for path, data in files:
                pending.append((path, pool.submit(self.write_bytes, path, data, False)))
                if len(pending) >= 2 * jobs:
                    path, future = pending.popleft()
                    future.result()
                    done.append(path)
            for path, future in pending:
                future.result()
                done.append(path)
        return done

    def staging_directory(self, path: str) -> str | None:
        """A new empty directory beside ``path`` (a temp name), for files written
        ``unseen`` that :meth:`publish_directory` then puts at ``path`` all at once;
        what a killed run staged for ``path`` is removed first. None where the store
        cannot rename a directory, or ``path`` holds something: the files are then
        written into ``path``, each whole. The caller holds the lock that covers
        ``path``."""
        return None

    def publish_directory(self, staging: str, path: str) -> None:
        """The :meth:`staging_directory` ``staging`` renamed to ``path``, durably."""
        raise NotImplementedError(f"{self.scheme}: no staging directories")

    def free_space(self, path: str = "") -> int | None:
        """Bytes that may still be written below ``path``; None where unknown."""
        return None

    def flush(self) -> None:  # noqa: B027 - remote stores are durable once they answer
        """Make every earlier non-durable write durable."""

    def note_written(self, paths: Iterable[str]) -> None:  # noqa: B027 - as flush
        """Files another process wrote here with ``durable=False``: this gateway's next
        flush makes them durable too."""

    def abort_incomplete(self, path: str, older_than: float = 60.0) -> int:
        """Drop writes below ``path`` that a killed run left unfinished and invisible
        (S3 multipart uploads, which cost storage until aborted); returns how many.
        Temp files elsewhere are visible and swept by the caller."""
        return 0

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Remove one file; a missing file is not an error (deletes are retried)."""

    # -- locking ----------------------------------------------------------------
    @abc.abstractmethod
    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` holding ``data`` only if it does not exist; False if it does."""

    def read_lock(self, path: str) -> bytes:
        """The record of whoever holds the lock at ``path``."""
        return self.read_bytes(path)

    def _remove_lock(self, path: str) -> None:
        self.delete(path)

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

    def _write_lock(self, path: str, data: bytes) -> None:
        """Rewrite the record of a lock this run holds (its heartbeat)."""
        self.write_bytes(path, data)

    @contextlib.contextmanager
    def lock(self, path: str, ttl: float = LOCK_TTL) -> Iterator[LockInfo]:
        """Hold ``path`` as a lock for the duration; raises :class:`LockHeld`.

        While held, the record's expiry is pushed ``ttl`` ahead every ``ttl / 4``
        seconds, so a holder that dies on another host frees the lock within minutes
        while a long run keeps it. A lock whose holder is provably dead (this host, no
        such pid) or whose expiry passed is taken over with a warning, so that a run
        killed by the OOM killer or a reboot does not block every later cron run.
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
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(path, mine, ttl, stop), daemon=True)
        beat.start()
        try:
            yield mine
        finally:
            stop.set()
            beat.join()
            try:
                self._remove_lock(path)
            except GatewayError as exc:
                log.warning("could not release lock: %s", exc)

    def _heartbeat(self, path: str, mine: LockInfo, ttl: float, stop: threading.Event) -> None:
        while not stop.wait(ttl / 4):
            try:
                held = LockInfo.from_bytes(self.read_lock(path))
                if held is None or (held.host, held.pid, held.started) != (
                    mine.host,
                    mine.pid,
                    mine.started,
                ):
                    log.error("%s: the lock was taken over by another run", self.display(path))
                    return
                self._write_lock(path, mine.renewed(ttl).to_bytes())
            except GatewayError as exc:  # the next beat may get through
                log.warning("%s: could not renew the lock: %s", self.display(path), exc)

    def close(self) -> None:  # noqa: B027 - most adapters hold nothing to release
        """Release connections; the gateway may not be used afterwards."""

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def listable(name: str, size: int) -> bool:
    """What a directory listing from a server may hold: a name that is not a path
    ('../x', 'a/b': no honest server lists one) and a size a file can have."""
    return "/" not in name and name not in ("", ".", "..") and 0 <= size < 1 << 63


def temp_name(path: str) -> str:
    """The sibling an atomic write fills before renaming it over ``path``.

    One pattern for every adapter, so that the next writer recognises (and sweeps)
    what a killed run left, whichever protocol wrote it."""
    parent, _, name = path.rpartition("/")
    # random's generator, not os.urandom: no system call per file, and it is reseeded
    # in a forked child, so two processes never pick the same name
    tmp = f".{name}.{random.getrandbits(48):012x}.part"
    return f"{parent}/{tmp}" if parent else tmp


def is_temp(name: str) -> bool:
    """Whether a file name is an atomic write's temp file (see :func:`temp_name`)."""
    return name.startswith(".") and name.endswith(".part")


def make_dirs(directory: str, exists: Callable[[str], bool], mkdir: Callable[[str], None]) -> None:
    """Create ``directory`` and its missing parents with a protocol's own calls:
    one check when it exists already (the common case), one create per level missing."""
    missing: list[str] = []
    while directory not in ("", ".", "/") and not exists(directory):
        missing.append(directory)
        directory = directory.rpartition("/")[0]
    for level in reversed(missing):
        mkdir(level)  # a concurrent writer may have made it: mkdir must tolerate that
