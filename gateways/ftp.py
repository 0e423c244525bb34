"""FTP and FTPS through ftplib: passive mode, MLSD with a LIST fallback, REST resume.

ftplib connections are not thread-safe and a transfer occupies its control
connection, so each stream or call borrows a connection from a small pool.
"""

from __future__ import annotations

import builtins
import contextlib
import ftplib
import netrc
import queue
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, NoReturn, TypeVar

from .base import FileInfo, Gateway, GatewayOptions, listable, make_dirs, stat_etag, temp_name
from .errors import (
    CredentialsError,
    GatewayError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    TransientError,
    WriteRefused,
    network_problem,
    not_text,
)
from .streams import CHUNK, GuardedStream
from .urls import parse

_NETWORK = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply)
# an answer that is no FTP: a reply without a code (error_proto), bytes that are not
# UTF-8, a size or listing that does not parse (ValueError); ftplib lets them through
_NOT_FTP = (ftplib.error_proto, ValueError)
_FULL = ("452", "552")  # a STOR refused for want of room: the disk, or a quota
# how servers that answer a full disk with another code say it (ProFTPD's 426 and 451
# "No space left on device", "Disk quota exceeded"); any other 4xx is transient
_ROOM = re.compile(r"no space|quota|disk full|insufficient storage", re.IGNORECASE)
T = TypeVar("T")
Entry = tuple[str, int, "float | None", bool]


def _reply(exc: BaseException) -> str:
    """A server's reply as one short line of an error: its code and first words."""
    return "FTP " + " ".join(str(exc).split())[:80]


def _not_ftp(where: str, exc: BaseException) -> GatewayError:
    if isinstance(exc, UnicodeEncodeError):  # ours to send, which ftplib could not
        return not_text(where, "FTP paths and credentials")
    return ProtocolError(where, f"an answer that is not FTP ({type(exc).__name__}: {exc!s:.60})")


def _mdtm(value: str) -> float | None:
    try:
        return time.mktime(time.strptime(value[:14], "%Y%m%d%H%M%S")) - time.timezone
    except ValueError:
        return None


class _Transfer:
    """One RETR on a borrowed connection: finished, the connection goes back to the
    pool; abandoned half-way, its control channel is unusable and is closed."""

    def __init__(self, gateway: FTPGateway, conn: ftplib.FTP, sock: socket.socket) -> None:
        self._gateway, self._conn, self._sock = gateway, conn, sock
        self._done = False

    def read(self, size: int) -> bytes:
        data = self._sock.recv(size if size > 0 else CHUNK)
        if not data and not self._done:
            self._done = True
            self._sock.close()
            self._conn.voidresp()
        return data

    def close(self) -> None:
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is None:
            return
        if self._done:
            self._gateway._release(conn)
            return
        with contextlib.suppress(Exception):
            self._sock.close()
        with contextlib.suppress(Exception):
            conn.close()


class FTPGateway(Gateway):
    scheme = "ftp"

    def __init__(self, url: str, options: GatewayOptions | None = None) -> None:
        super().__init__(url, options)
        loc = parse(url)
        self.host, self.port = loc.host, loc.port or 21
        self.tls = loc.scheme == "ftps"
        self.user = loc.username or "anonymous"
        self.password = loc.password
        if self.password is None and loc.username:
            with contextlib.suppress(FileNotFoundError, netrc.NetrcParseError):
                auth = netrc.netrc().authenticators(self.host)
                if auth and auth[0] in (None, loc.username):
                    self.password = auth[2]
        self.root = loc.path.rstrip("/") or ""
        self._pool: queue.LifoQueue[ftplib.FTP] = queue.LifoQueue()
        self._mlsd = True

    # -- connections -------------------------------------------------------------
    def _connect(self) -> ftplib.FTP:
        where = self.display()
        try:
            if self.tls:
                context = ssl.create_default_context(cafile=self.options.ca_bundle)
                if not self.options.verify_tls:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                conn: ftplib.FTP = ftplib.FTP_TLS(context=context, timeout=self.options.timeout)
            else:
                conn = ftplib.FTP(timeout=self.options.timeout)
            conn.connect(self.host, self.port)
            conn.login(self.user, self.password or "")
            if isinstance(conn, ftplib.FTP_TLS):
                conn.prot_p()
            conn.set_pasv(True)
            conn.voidcmd("TYPE I")
            return conn
        except ftplib.error_perm as exc:
            raise CredentialsError(
                where,
                f"login refused: {str(exc)[:3]}",
                "check the user name and password (URL or ~/.netrc)",
            ) from None
        except _NETWORK as exc:
            raise TransientError(
                where,
                f"cannot connect: {network_problem(exc)}",
                "check the host name, port and network",
            ) from None
        except _NOT_FTP as exc:
            raise _not_ftp(where, exc) from None

    def _acquire(self, retry: bool = True) -> ftplib.FTP:
        """A live connection; ``retry``: connect with retries, unless the caller
        retries the whole operation (then once: a dead host costs retries once)."""
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                return self._retry("", self._connect) if retry else self._connect()
            try:
                conn.voidcmd("TYPE I")  # a liveness check, and LIST/MLSD leave ASCII mode on
                return conn
            except (*_NETWORK, *_NOT_FTP, ftplib.error_perm):  # not fit for use: a new one
                with contextlib.suppress(Exception):
                    conn.close()

    def _release(self, conn: ftplib.FTP) -> None:
        self._pool.put(conn)

    @contextlib.contextmanager
    def _conn(self, path: str, retry: bool = True) -> Iterator[ftplib.FTP]:
        conn = self._acquire(retry)
        try:
            yield conn
        except BaseException as exc:
            self._fail(conn, path, exc)
        else:
            self._release(conn)

    def _fail(self, conn: ftplib.FTP, path: str, exc: BaseException) -> NoReturn:
        """Map a failure to a gateway error; keep the connection only if it still works."""
        if isinstance(exc, ftplib.error_perm):
            self._release(conn)
            code = str(exc)[:3]
            where = self.display(path)
            if code in ("550", "450"):
                raise NotFound(where, f"FTP {code}: no such file or access denied", code=code)
            if code in ("530", "532"):
                raise PermissionDenied(where, f"FTP {code}: not allowed", code=code)
            raise ProtocolError(where, f"FTP error {str(exc)[:60]}", code=code)
        with contextlib.suppress(Exception):
            conn.close()
        if isinstance(exc, (ftplib.error_temp, ftplib.error_reply)):  # it answered
            raise TransientError(self.display(path), f"the server answered {_reply(exc)}")
        if isinstance(exc, _NETWORK):
            raise TransientError(self.display(path), f"connection broke: {network_problem(exc)}")
        if isinstance(exc, _NOT_FTP):
            raise _not_ftp(self.display(path), exc) from None
        raise exc

    def _do(self, path: str, fn: Callable[[ftplib.FTP], T]) -> T:
        def attempt() -> T:
            with self._conn(path, retry=False) as conn:
                return fn(conn)

        return self._retry(path, attempt)

    def _abs(self, path: str) -> str:
        rel = self._rel(path)
        return f"{self.root}/{rel}" if rel else (self.root or "/")

    # -- reading -----------------------------------------------------------------
    def info(self, path: str) -> FileInfo:
        target = self._abs(path)

        def stat(conn: ftplib.FTP) -> FileInfo:
            size = conn.size(target)
            if size is None:
                raise ProtocolError(self.display(path), "the server does not report sizes")
            mtime = _mdtm(conn.sendcmd(f"MDTM {target}")[4:].strip())
            return FileInfo(self._rel(path), size, mtime, stat_etag(size, mtime))

        try:
            return self._do(path, stat)
        except NotFound:
            rel = self._rel(path)
            if rel:  # a directory: SIZE refuses it, its parent's listing knows it
                parent = rel.rpartition("/")[0]
                for entry in self._listdir(parent):
                    if entry.path == rel and entry.is_dir:
                        return entry
            elif self._is_dir(target):
                return FileInfo("", 0, None, None, True)
            raise

    def _is_dir(self, target: str) -> bool:
        try:
            with self._conn(target) as conn:
                conn.cwd(target)
            return True
        except NotFound:
            return False

    def _listdir(self, path: str) -> builtins.list[FileInfo]:
        rel = self._rel(path)
        return [
            FileInfo(f"{rel}/{name}" if rel else name, size, mtime, stat_etag(size, mtime), is_dir)
            for name, size, mtime, is_dir in self._entries(path, self._abs(path))
            if listable(name, size)
        ]

    def _entries(self, path: str, target: str) -> builtins.list[Entry]:
        def mlsd(conn: ftplib.FTP) -> builtins.list[Entry]:
            out: builtins.list[Entry] = []
            for name, facts in conn.mlsd(target, facts=["type", "size", "modify"]):
                kind = facts.get("type", "file")
                if kind in ("cdir", "pdir"):
                    continue
                out.append(
                    (name, int(facts.get("size", 0)), _mdtm(facts.get("modify", "")), kind == "dir")
                )
            return out

        def unix_list(conn: ftplib.FTP) -> builtins.list[Entry]:
            lines: list[str] = []
            conn.retrlines(f"LIST {target}", lines.append)
            out: builtins.list[Entry] = []
            for line in lines:
                fields = line.split(None, 8)
                if len(fields) < 9:
                    continue
                out.append(
                    (
                        fields[8],
                        int(fields[4]) if fields[4].isascii() and fields[4].isdigit() else 0,
                        None,
                        line.startswith("d"),
                    )
                )
            return out

        if self._mlsd:
            try:
                return self._do(path, mlsd)
            except ProtocolError as exc:
                if exc.code == "501":  # pyftpdlib: "No such directory"
                    raise NotFound(exc.url, "no such directory", code=exc.code) from None
                if exc.code not in ("500", "502", "504"):  # MLSD is not supported
                    raise
                self._mlsd = False
        return self._do(path, unix_list)

    def _open(self, path: str, offset: int, version: str | None) -> tuple[BinaryIO, str | None]:
        conn = self._acquire(retry=False)  # the reader around this retries (see open_read)
        try:
            sock = conn.transfercmd(f"RETR {self._abs(path)}", rest=offset or None)
        except BaseException as exc:
            self._fail(conn, path, exc)
        transfer = _Transfer(self, conn, sock)
        # a final answer other than 226 leaves the bytes unconfirmed: resumed as a
        # broken connection is (what arrived is verified against its record anyway)
        broken = (*_NETWORK, *_NOT_FTP, ftplib.error_perm)
        stream = GuardedStream(transfer.read, transfer.close, self.display(path), broken)
        return stream.as_binary(), None

    # -- writing -----------------------------------------------------------------
    def _makedirs(self, conn: ftplib.FTP, directory: str) -> None:
        def exists(level: str) -> bool:
            try:
                conn.cwd(level)
            except ftplib.error_perm:
                return False
            return True

        def mkdir(level: str) -> None:
            with contextlib.suppress(ftplib.error_perm):
                conn.mkd(level)

        make_dirs(directory, exists, mkdir)

    def write_atomic(self, path: str, stream: BinaryIO, durable: bool = True) -> FileInfo:
        target = self._abs(path)
        parent = target.rpartition("/")[0]
        tmp = temp_name(target)
        sent = 0

        def count(block: bytes) -> None:
            nonlocal sent
            sent += len(block)

        with self._conn(path) as conn:
            self._makedirs(conn, parent)
            try:
                try:
                    conn.storbinary(f"STOR {tmp}", stream, CHUNK, count)
                except (ftplib.error_temp, ftplib.error_perm) as exc:
                    if str(exc)[:3] not in _FULL and not _ROOM.search(str(exc)):
                        raise
                    raise self._refused(path, _reply(exc)) from None
                kept = conn.size(tmp)  # a server that said yes and kept less
                if kept != sent:
                    raise WriteRefused.short(self.display(path), kept, sent)
                self._replace(conn, tmp, target)
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.delete(tmp)
                raise
            mtime = _mdtm(conn.sendcmd(f"MDTM {target}")[4:].strip())
        return FileInfo(self._rel(path), sent, mtime, stat_etag(sent, mtime))

    def _refused(self, path: str, why: str) -> WriteRefused:
        return WriteRefused(self.display(path), f"the server refused a write: {why}")

    def _replace(self, conn: ftplib.FTP, src: str, dst: str) -> None:
        try:
            conn.rename(src, dst)
        except ftplib.error_perm:
            # servers that refuse to rename over a file: the gap is one round trip
            with contextlib.suppress(ftplib.error_perm):
                conn.delete(dst)
            conn.rename(src, dst)

    def delete(self, path: str) -> None:
        with contextlib.suppress(NotFound), self._conn(path) as conn:
            conn.delete(self._abs(path))

    # FTP has no exclusive create; MKD is exclusive, so a lock is a directory
    # holding its owner's record.
    def _create_exclusive(self, path: str, data: bytes) -> bool:
        target = self._abs(path)
        with self._conn(path) as conn:
            self._makedirs(conn, target.rpartition("/")[0])
            try:
                conn.mkd(target)
            except ftplib.error_perm:
                return False
        self.write_bytes(f"{self._rel(path)}/owner", data)
        return True

    def _write_lock(self, path: str, data: bytes) -> None:
        self.write_bytes(f"{self._rel(path)}/owner", data)

    def read_lock(self, path: str) -> bytes:
        try:
            return self.read_bytes(f"{self._rel(path)}/owner")
        except NotFound:
            if self._is_dir(self._abs(path)):
                # a run killed between MKD and writing its owner: an unreadable lock,
                # aged by the directory's mtime, not one that "vanished" forever
                return b""
            raise

    def _remove_lock(self, path: str) -> None:
        self.delete(f"{self._rel(path)}/owner")
        with contextlib.suppress(NotFound), self._conn(path) as conn:
            conn.rmd(self._abs(path))

    def close(self) -> None:
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.quit()
