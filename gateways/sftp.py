"""SFTP through paramiko: keys as OpenSSH finds them, host keys checked by default.

The URL path is absolute on the server; ``/~/`` starts at the login's home, as
curl reads it. One SSH transport serves every thread, each with its own channel.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar, cast

from .base import FileInfo, Gateway, GatewayOptions, listable, make_dirs, stat_etag, temp_name
from .errors import (
    CredentialsError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    TransientError,
    UsageError,
    WriteRefused,
    network_problem,
    not_text,
)
from .sftpreads import PipelinedReads, read_size
from .streams import CHUNK, GuardedStream
from .urls import parse

# paramiko imports invoke (a third of paramiko's own import time) only to run
# ssh_config's "Match exec", and ferry never has paramiko parse an ssh_config (the
# system's ssh reads the user's): held out while paramiko loads, importable after
_HELD = "invoke" not in sys.modules
if _HELD:
    sys.modules["invoke"] = None  # type: ignore[assignment]
try:
    import paramiko
finally:
    if _HELD:
        del sys.modules["invoke"]

from .sftpcheck import StrictSFTPClient  # noqa: E402 - subclasses paramiko's, loaded as above
from .sftpwrites import Refusal, write_all  # noqa: E402 - as above

log = logging.getLogger("ferry.gateways")
_NETWORK = (paramiko.SSHException, EOFError, OSError)
T = TypeVar("T")


class _FastTransport(paramiko.Transport):
    """AES-GCM first where the server offers it: paramiko moves bytes in Python, and
    GCM's single pass (no separate MAC) is the cheapest there, about 40% faster here."""

    _preferred_ciphers = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        *(c for c in getattr(paramiko.Transport, "_preferred_ciphers", ()) if "gcm" not in c),
    )


class _Pipe:
    """One end of a socket pair, as paramiko's SFTP client reads a channel."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: bytes) -> int:
        return self._sock.send(data)

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def close(self) -> None:
        self._sock.close()

    def get_name(self) -> str:
        return "openssh"

    def recv_ready(self) -> bool:
        return bool(select.select([self._sock], [], [], 0)[0])

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def setblocking(self, blocking: bool) -> None:
        self._sock.setblocking(blocking)


class _OpenSSH:
    """SFTP sessions through the system's ``ssh``: OpenSSH moves and encrypts the bytes
    in C (paramiko's transport does it in Python, about twice the time for a large
    file), and reads the user's ``~/.ssh/config``, agent and jump hosts as ``ssh``
    does. paramiko still speaks SFTP over it. One ``ssh`` process per session."""

    def __init__(self, argv: list[str], where: str, timeout: float) -> None:
        self._argv, self._where, self._timeout = argv, where, timeout
        self._lock = threading.Lock()
        self._sessions: list[tuple[subprocess.Popen[bytes], paramiko.SFTPClient]] = []
        self._first: paramiko.SFTPClient | None = self._session()  # fails here, clearly

    def _session(self) -> paramiko.SFTPClient:
        mine, theirs = socket.socketpair()
        # ssh's complaints go to a file, never a pipe: nobody reads it while all is well
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(
                    self._argv,
                    stdin=theirs.fileno(),
                    stdout=theirs.fileno(),
                    stderr=errors,
                    start_new_session=True,  # Ctrl-C reaches ferry, which ends the session
                )
            except OSError as exc:
                mine.close()
                raise TransientError(self._where, f"cannot run ssh: {exc.strerror}") from None
            finally:
                theirs.close()
            try:
                client = StrictSFTPClient(_Pipe(mine))  # type: ignore[arg-type]
            except (paramiko.SSHException, EOFError, OSError):
                mine.close()
                proc.wait()
                errors.seek(0)
                said = errors.read().decode("utf-8", "replace")
                raise _ssh_failure(self._where, said) from None
        mine.settimeout(self._timeout)  # once connected, silence this long is a failure
        with self._lock:
            self._sessions.append((proc, client))
        return client

    def is_active(self) -> bool:
        return True  # each session is its own process; a dead one fails its own calls

    def open_sftp(self) -> paramiko.SFTPClient:
        with self._lock:
            first, self._first = self._first, None
        return first or self._session()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions, self._first = self._sessions, [], None
        for proc, client in sessions:
            with contextlib.suppress(Exception):
                client.close()  # ssh sees the end of its input and leaves
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _host_key_changed(where: str) -> ProtocolError:
    return ProtocolError(
        where,
        "the server's host key does not match known_hosts",
        "the server changed or someone is in between: check it",
    )


def _host_key_unknown(where: str) -> ProtocolError:
    return ProtocolError(
        where,
        "the server's host key is not in known_hosts",
        "add it with ssh-keyscan, or name the file in {option}",
        option="known_hosts",
    )


def _auth_failed(where: str, try_also: str) -> CredentialsError:
    return CredentialsError(
        where,
        "authentication failed",
        f"check the user, the key file ({{option}}) or {try_also}",
        option="key_file",
    )


def _ssh_failure(where: str, stderr: str) -> Exception:
    """What ``ssh`` said, as the error a paramiko connection would have raised."""
    text = stderr.strip()
    if "IDENTIFICATION HAS CHANGED" in text:
        return _host_key_changed(where)
    if "Host key verification failed" in text or "host key is known" in text:
        return _host_key_unknown(where)
    if "Permission denied" in text:
        return _auth_failed(where, "your ssh agent")
    kinds: list[tuple[str, BaseException]] = [
        ("Connection refused", ConnectionRefusedError()),
        ("Could not resolve hostname", socket.gaierror()),
        ("timed out", TimeoutError()),
        ("Connection reset", ConnectionResetError()),
    ]
    found = next((exc for words, exc in kinds if words in text), None)
    last = text.splitlines()[-1].removeprefix("ssh: ") if text else "it ended the session"
    problem = network_problem(found) if found is not None else f"ssh: {last}"
    return TransientError(
        where, f"cannot connect: {problem}", "check the host name, port and network"
    )


class _Paramiko:
    """SFTP sessions over paramiko's own SSH transport (a password in the URL, or no
    ``ssh`` installed): channels of one shared connection."""

    def __init__(self, client: paramiko.SSHClient, timeout: float) -> None:
        self._client, self._timeout = client, timeout

    def is_active(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def open_sftp(self) -> paramiko.SFTPClient:
        transport = self._client.get_transport()
        sftp = StrictSFTPClient.from_transport(transport) if transport is not None else None
        if sftp is None:
            raise paramiko.SSHException("the connection closed")
        channel = sftp.get_channel()
        if channel is not None:  # silence this long is a failure, as over ssh
            channel.settimeout(self._timeout)
        return sftp

    def close(self) -> None:
        _close(self._client, self._timeout)


def _close(client: paramiko.SSHClient, timeout: float) -> None:
    """Close ``client`` and let its transport's thread end (paramiko's close does not
    wait for it): a run with a thread about would start its workers afresh instead
    of forking them."""
    transport = client.get_transport()
    client.close()
    if transport is None or transport.ident is None:  # none, or never started
        return
    if transport is not threading.current_thread():
        transport.join(timeout)


class SFTPGateway(Gateway):
    scheme = "sftp"

    def __init__(self, url: str, options: GatewayOptions | None = None) -> None:
        super().__init__(url, options)
        loc = parse(url)
        self.host, self.port = loc.host, loc.port or 22
        self.user = loc.username or os.environ.get("USER") or "root"
        self._named = (loc.username, loc.port)  # what ssh's own config may fill in
        self.password = loc.password
        path = loc.path or "/"
        # "/~/x" is x below the home directory, which is where SFTP sessions start.
        self.root = path[3:].rstrip("/") if path.startswith("/~") else (path.rstrip("/") or "/")
        if path in ("/~", "/~/"):
            self.root = "."
        self._lock = threading.Lock()
        self._client: _OpenSSH | _Paramiko | None = None
        self._local = threading.local()
        self._generation = 0
        self._read_size: int | None = None  # the server's largest full read, once known

    # -- connections -------------------------------------------------------------
    def _connect(self) -> _OpenSSH | _Paramiko:
        if self.options.insecure_host_key:
            log.warning("%s: host key NOT verified (insecure option)", self.display())
        ssh = shutil.which("ssh") if self.options.openssh and not self.password else None
        if ssh is None:
            return _Paramiko(self._connect_paramiko(), self.options.timeout)
        argv = [ssh, "-o", "LogLevel=ERROR"]
        user, port = self._named  # else the user's ssh config (or ssh) chooses them
        argv += ["-l", user] if user else []
        argv += ["-p", str(port)] if port else []
        wait = max(1, round(self.options.timeout))
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={wait}"]
        argv += ["-o", "ServerAliveInterval=30"]
        if self.options.key_file:
            argv += ["-i", os.path.expanduser(self.options.key_file)]
        if self.options.insecure_host_key:
            argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            argv += ["-o", "StrictHostKeyChecking=yes"]
            if self.options.known_hosts:
                known = os.path.expanduser(self.options.known_hosts)
                argv += ["-o", f"UserKnownHostsFile={known}"]
        argv += ["-s", "--", self.host, "sftp"]
        return _OpenSSH(argv, self.display(), self.options.timeout)

    def _connect_paramiko(self) -> paramiko.SSHClient:
        where = self.display()
        client = paramiko.SSHClient()
        try:
            if self.options.known_hosts:
                client.load_host_keys(os.path.expanduser(self.options.known_hosts))
            else:
                client.load_system_host_keys()
        except OSError as exc:
            raise ProtocolError(where, f"cannot read known_hosts: {exc.strerror}") from None
        except (UnicodeDecodeError, paramiko.SSHException, paramiko.hostkeys.InvalidHostKey) as exc:
            raise UsageError(
                where,
                f"known_hosts is not a known_hosts file ({type(exc).__name__})",
                "give the file ssh keeps host keys in, e.g. ~/.ssh/known_hosts",
            ) from None
        if self.options.insecure_host_key:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self._handshake(client, where)
        except BaseException:
            _close(client, self.options.timeout)  # a failed handshake's, too
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
        return client

    def _handshake(self, client: paramiko.SSHClient, where: str) -> None:
        try:
            client.connect(
                self.host,
                self.port,
                username=self.user,
                password=self.password,
                key_filename=os.path.expanduser(self.options.key_file)
                if self.options.key_file
                else None,
                timeout=self.options.timeout,
                banner_timeout=self.options.timeout,
                auth_timeout=self.options.timeout,
                allow_agent=True,
                look_for_keys=True,
                transport_factory=_FastTransport,  # type: ignore[arg-type]
            )
        except paramiko.BadHostKeyException:
            raise _host_key_changed(where) from None
        except paramiko.AuthenticationException:
            raise _auth_failed(where, "the password") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise _host_key_unknown(where) from None
            raise TransientError(where, f"SSH failed: {type(exc).__name__}") from None
        except (OSError, EOFError) as exc:
            raise TransientError(
                where,
                f"cannot connect: {network_problem(exc)}",
                "check the host name, port and network",
            ) from None

    def _sftp(self, retry: bool = True) -> paramiko.SFTPClient:
        """This thread's channel, reconnecting the shared transport if it died
        (``retry``: on its own, unless the caller retries the whole operation)."""
        with self._lock:
            if self._client is None or not self._client.is_active():
                if self._client is not None:
                    with contextlib.suppress(Exception):
                        self._client.close()
                self._client = self._retry("", self._connect) if retry else self._connect()
                self._generation += 1
            client, generation = self._client, self._generation
        channel = getattr(self._local, "sftp", None)
        if channel is None or getattr(self._local, "generation", -1) != generation:
            try:
                channel = client.open_sftp()
            except _NETWORK as exc:
                raise TransientError(
                    self.display(),
                    f"cannot open SFTP ({type(exc).__name__})",
                    "is the sftp subsystem enabled on the server?",
                ) from None
            self._local.sftp, self._local.generation = channel, generation
        return channel

    def _abs(self, path: str) -> str:
        rel = self._rel(path)
        if not rel:
            return self.root
        return f"{self.root.rstrip('/')}/{rel}" if self.root != "." else rel

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise NotFound(self.display(path), "no such file") from None
        except PermissionError:
            raise PermissionDenied(self.display(path), "permission denied") from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise NotFound(self.display(path), "no such file") from None
            if exc.errno == errno.EACCES:
                raise PermissionDenied(self.display(path), "permission denied") from None
            if isinstance(exc, (ConnectionError, TimeoutError, EOFError)) or (
                exc.errno is None and "Socket" in str(exc)
            ):
                self._drop_session()
                if isinstance(exc, TimeoutError):
                    self._silent()
                raise TransientError(self.display(path), f"connection broke: {exc}") from None
            said = exc.strerror or str(exc) or "a failure, in no words"
            raise ProtocolError(self.display(path), f"SFTP: {said}") from None
        except (paramiko.SSHException, EOFError) as exc:
            self._drop_session()
            raise TransientError(
                self.display(path), f"connection broke: {network_problem(exc)}"
            ) from None
        except UnicodeEncodeError:  # ours to send, which paramiko could not
            raise not_text(self.display(path), "SFTP paths") from None
        except (paramiko.SFTPError, UnicodeError) as exc:
            # an answer no SFTP server may give (a packet paramiko calls garbage, a name
            # that is not UTF-8): the session may be out of step, so it goes
            self._drop_session()
            raise ProtocolError(
                self.display(path), f"SFTP: an answer out of protocol ({type(exc).__name__})"
            ) from None

    def _drop_session(self) -> None:
        """This thread's session, broken or out of step: closed, and the next call
        opens another."""
        sftp, self._local.sftp = getattr(self._local, "sftp", None), None
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.close()

    def _silent(self) -> None:
        """A session silent past the timeout. Over paramiko's own transport all share
        one connection, which would hang the next channel opened on it too: it is
        closed, and the next call connects anew (over ssh each session is its own)."""
        with self._lock:
            if isinstance(self._client, _Paramiko):
                with contextlib.suppress(Exception):
                    self._client.close()

    def _do(self, path: str, fn: Callable[[paramiko.SFTPClient], T]) -> T:
        def attempt() -> T:
            with self._errors(path):
                return fn(self._sftp(retry=False))

        return self._retry(path, attempt)

    # -- reading -----------------------------------------------------------------
    def _info(self, rel: str, attrs: paramiko.SFTPAttributes) -> FileInfo:
        size = attrs.st_size or 0
        mtime = float(attrs.st_mtime) if attrs.st_mtime is not None else None
        is_dir = stat.S_ISDIR(attrs.st_mode or 0)
        return FileInfo(rel, size, mtime, stat_etag(size, mtime), is_dir)

    def info(self, path: str) -> FileInfo:
        attrs = self._do(path, lambda s: s.stat(self._abs(path)))
        return self._info(self._rel(path), attrs)

    def _listdir(self, path: str) -> list[FileInfo]:
        rel = self._rel(path)
        entries = self._do(path, lambda s: s.listdir_attr(self._abs(path)))
        return [
            self._info(f"{rel}/{a.filename}" if rel else a.filename, a)
            for a in entries
            if listable(a.filename, a.st_size or 0)
        ]

    def _open(self, path: str, offset: int, version: str | None) -> tuple[BinaryIO, str | None]:
        with self._errors(path):
            sftp = self._sftp(retry=False)  # the reader around this retries (see open_read)
            if isinstance(sftp.sock, _Pipe):
                return self._open_pipelined(path, offset, sftp, sftp.sock.socket), None
            handle = sftp.open(self._abs(path), "rb", bufsize=CHUNK)
            size = handle.stat().st_size or 0
            handle.seek(offset)
            if size > offset:
                handle.prefetch(size - offset)  # pipelined reads: the throughput of SFTP
        stream = GuardedStream(handle.read, handle.close, self.display(path), _NETWORK)
        return stream.as_binary(), None

    def _open_pipelined(
        self, path: str, offset: int, sftp: paramiko.SFTPClient, sock: socket.socket
    ) -> BinaryIO:
        """A stream with this thread's session to itself until it closes: the session
        then serves the thread again, unless it broke (or the thread has a new one)."""
        generation = self._local.generation
        self._local.sftp = None
        reads: PipelinedReads | None = None
        handle: paramiko.SFTPFile | None = None

        def close() -> None:
            healthy = False
            try:
                if reads is None or reads.close():  # else the session is out of step
                    if handle is not None:
                        handle.close()
                    healthy = True
            finally:
                local = self._local  # the closing thread's (a stream may change threads)
                if (
                    healthy
                    and getattr(local, "sftp", None) is None
                    and getattr(local, "generation", None) == generation
                ):
                    local.sftp = sftp
                else:
                    with contextlib.suppress(Exception):
                        sftp.close()

        try:
            handle = sftp.open(self._abs(path), "rb")
            size = handle.stat().st_size or 0
            if self._read_size is None:
                self._read_size = read_size(sock)
            reads = PipelinedReads(sock, cast(bytes, handle.handle), offset, size, self._read_size)
        except BaseException:
            with contextlib.suppress(Exception):
                close()
            raise
        return GuardedStream(reads.read, close, self.display(path), _NETWORK).as_binary()

    # -- writing -----------------------------------------------------------------
    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        def mkdir(level: str) -> None:
            with contextlib.suppress(OSError):
                sftp.mkdir(level)

        make_dirs(directory, functools.partial(self._exists, sftp), mkdir)

    def write_atomic(self, path: str, stream: BinaryIO, durable: bool = True) -> FileInfo:
        target = self._abs(path)
        parent = target.rpartition("/")[0]
        tmp = temp_name(target)
        with self._errors(path):
            sftp = self._sftp()
            self._makedirs(sftp, parent)
            try:
                with sftp.open(tmp, "wb") as out:
                    size = write_all(sftp, cast(bytes, out.handle), stream)
                    attrs = out.stat()
                if attrs.st_size != size:  # a server that said yes and kept less
                    raise Refusal(f"the server kept {attrs.st_size} of {size} bytes")
                sftp.posix_rename(tmp, target)
            except Refusal as exc:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
                said = f"the server refused a write: {exc}"
                raise WriteRefused(self.display(path), said) from None
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
                raise
        return self._info(self._rel(path), attrs)

    def delete(self, path: str) -> None:
        with contextlib.suppress(NotFound):
            self._do(path, lambda s: s.remove(self._abs(path)))

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """The record written whole under a temp name, then hard-linked as ``path``
        (OpenSSH's ``hardlink@openssh.com``, which fails if it exists): the lock
        appears whole or not at all. Created empty and then written, a run killed
        between the two left a record no one could read, which every run took for
        a live holder's for five minutes. Where the server has no such link, so."""
        target = self._abs(path)
        parent = target.rpartition("/")[0]
        with self._errors(path):
            sftp = self._sftp()
            self._makedirs(sftp, parent)
            tmp = temp_name(target)
            with sftp.open(tmp, "wbx") as out:
                out.write(data)
            try:
                cast(StrictSFTPClient, sftp).hardlink(tmp, target)  # every session is one
                return True
            except OSError:
                if self._exists(sftp, target):
                    return False
            finally:
                with contextlib.suppress(OSError):
                    sftp.remove(tmp)
            try:  # no hard links here: created, then written
                with sftp.open(target, "wbx") as out:  # O_CREAT|O_EXCL|O_WRONLY
                    out.write(data)
            except OSError:
                if not self._exists(sftp, target):
                    raise
                return False
        return True

    @staticmethod
    def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
