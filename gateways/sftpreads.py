"""Pipelined SFTP reads straight off the socket to ``ssh``: the bulk path of a download.

paramiko's prefetch asks for 32 kB at a time and runs a dozen Python calls per
answer; OpenSSH's own ``sftp`` asks for as much as the server allows (255 kB from
OpenSSH's server, which says so through ``limits@openssh.com``) and keeps many
requests in flight. This reader does the same with one buffered read per field.
It speaks only READ and the answers to it (SFTP v3, draft-ietf-secsh-filexfer-02);
paramiko still opens, stats and closes the file.

The reader owns its session while it runs: answers to its requests must not reach
paramiko, nor paramiko's answers reach it. Its request ids count down from 2**32-1,
far from paramiko's, which count up from 1.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import BinaryIO, cast

_READ, _EXTENDED = 5, 200
_STATUS, _DATA, _EXTENDED_REPLY = 101, 103, 201
_EOF, _NO_SUCH_FILE, _PERMISSION_DENIED = 1, 2, 3
_HEAD = struct.Struct(">IBI")  # length, type, request id
_U32 = struct.Struct(">I")
_READ_REQ = struct.Struct(">QI")  # offset, length
_LIMITS = struct.Struct(">QQQQ")
SAFE_READ = 32768  # what every server takes (the draft's minimum packet size)
MOST_READ = 255 * 1024
MOST_ANSWER = MOST_READ + 1024  # a read's answer, with room for its framing
IN_FLIGHT = 8 << 20  # bytes asked for and not yet answered


class SFTPStatus(OSError):
    """A status answer other than end of file, as paramiko raises it (an OSError)."""


class _Wire:
    """Framing over a socket: requests out, answers in, ids from the top down."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._in = cast(BinaryIO, sock.makefile("rb", buffering=1 << 20))
        self._next_id = 0xFFFFFFFF

    def new_id(self) -> int:
        self._next_id -= 1
        return self._next_id + 1

    def send(self, packets: list[bytes]) -> None:
        self._sock.sendall(b"".join(packets))

    def exactly(self, count: int) -> bytes:
        data = self._in.read(count)
        if len(data) != count:
            raise EOFError("the SFTP session ended")
        return data

    def answer(self) -> tuple[int, int, bytes]:
        """The next answer: its type, request id and body (a DATA answer's bytes alone).
        A length beyond any answer to ferry's requests is a broken or lying server,
        refused before it is allocated."""
        length, kind, rid = _HEAD.unpack(self.exactly(_HEAD.size))
        if not 5 <= length <= MOST_ANSWER:
            raise SFTPStatus(f"an SFTP answer of {length} bytes")
        if kind == _DATA and length >= 9:
            (size,) = _U32.unpack(self.exactly(4))
            if size != length - 9:
                raise SFTPStatus("an SFTP data answer whose lengths disagree")
            return kind, rid, self.exactly(size)
        return kind, rid, self.exactly(length - 5)

    def close(self) -> None:
        self._in.close()  # the socket itself stays open for paramiko


def _string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _packet(kind: int, body: bytes) -> bytes:
    return _U32.pack(len(body) + 1) + bytes([kind]) + body


def _status(body: bytes) -> tuple[int, str]:
    if len(body) < 4:
        raise SFTPStatus("an SFTP status answer without a code")
    (code,) = _U32.unpack_from(body)
    (size,) = _U32.unpack_from(body, 4) if len(body) >= 8 else (0,)
    return code, body[8 : 8 + size].decode("utf-8", "replace")


def _raise_status(body: bytes) -> None:
    code, message = _status(body)
    if code == _NO_SUCH_FILE:
        raise FileNotFoundError(message or "no such file")
    if code == _PERMISSION_DENIED:
        raise PermissionError(message or "permission denied")
    raise SFTPStatus(message or f"SFTP status {code}")


def read_size(sock: socket.socket) -> int:
    """The largest read the server answers in full: its ``limits@openssh.com`` figure,
    else the size every server takes. One round trip; the session must be idle."""
    wire = _Wire(sock)
    try:
        rid = wire.new_id()
        body = _U32.pack(rid) + _string(b"limits@openssh.com")
        wire.send([_packet(_EXTENDED, body)])
        kind, got, answer = wire.answer()
    finally:
        wire.close()
    if kind != _EXTENDED_REPLY or got != rid or len(answer) < _LIMITS.size:
        return SAFE_READ
    most = _LIMITS.unpack_from(answer)[1]  # max read length; 0 means no limit
    return min(most, MOST_READ) if most else MOST_READ


class PipelinedReads:
    """The bytes of one open file from ``offset`` to ``size`` (its size when opened),
    with many reads in flight. Answers come in the order asked for from every server
    known, but the draft allows any order, and a server may answer short: both are
    handled. ``close`` says whether the session can serve again."""

    def __init__(
        self, sock: socket.socket, handle: bytes, offset: int, size: int, chunk: int
    ) -> None:
        self._wire = _Wire(sock)
        self._handle = _string(handle)
        self._next, self._size, self._chunk = offset, size, chunk
        self._depth = min(64, max(2, IN_FLIGHT // chunk))
        self._asked: deque[tuple[int, int, int]] = deque()  # id, offset, length
        self._due: set[int] = set()  # ids asked for and not yet answered
        self._answers: dict[int, tuple[int, bytes]] = {}
        self._ended = False
        self._failed = False  # a read raised: the session may be out of step
        self._rest, self._at = b"", 0  # an answer partly read
        try:
            self._ask()
        except BaseException:
            self._wire.close()
            raise

    def _request(self, offset: int, length: int) -> tuple[tuple[int, int, int], bytes]:
        rid = self._wire.new_id()
        self._due.add(rid)
        body = _U32.pack(rid) + self._handle + _READ_REQ.pack(offset, length)
        return (rid, offset, length), _packet(_READ, body)

    def _ask(self, first: tuple[int, int] | None = None) -> None:
        packets = []
        if first is not None:  # the rest of a short answer, before all else
            entry, packet = self._request(*first)
            self._asked.appendleft(entry)
            packets.append(packet)
        while len(self._asked) < self._depth and self._next < self._size:
            length = min(self._chunk, self._size - self._next)
            entry, packet = self._request(self._next, length)
            self._asked.append(entry)
            packets.append(packet)
            self._next += length
        if packets:
            self._wire.send(packets)

    def read(self, size: int) -> bytes:
        """At most ``size`` bytes and at most one answer's (a short read, as a socket
        gives: it saves joining answers that the caller writes anyway); empty at the end."""
        if self._at >= len(self._rest):
            try:
                self._rest, self._at = self._answer(), 0
            except BaseException:
                self._failed = True
                raise
        if self._at == 0 and len(self._rest) <= size:
            piece = self._rest
        else:
            piece = self._rest[self._at : self._at + size]
        self._at += len(piece)
        return piece

    def _answer(self) -> bytes:
        """The bytes of the next read in file order; empty at the end."""
        if self._ended or not self._asked:
            return b""
        rid, offset, length = self._asked.popleft()
        kind, body = self._await(rid)
        if kind == _STATUS:
            if _status(body)[0] != _EOF:
                _raise_status(body)
            self._ended = True  # the file is shorter than when it was opened
            return b""
        if kind != _DATA or not body or len(body) > length:
            raise SFTPStatus(f"an SFTP answer (type {kind}, {len(body)} bytes) to a read")
        short = len(body) < length
        self._ask((offset + len(body), length - len(body)) if short else None)
        return body

    def close(self) -> bool:
        """Whether the session can serve again: the answers still due are read, unless
        a read failed (the rest of the stream may be anything, or never come)."""
        try:
            if self._failed:
                return False
            while self._due:
                self._await(next(iter(self._due)))
            return True
        finally:
            self._wire.close()

    def _await(self, rid: int) -> tuple[int, bytes]:
        """The answer to ``rid``, keeping those that come before it for their turn."""
        while rid not in self._answers:
            kind, got, body = self._wire.answer()
            if got not in self._due:
                raise SFTPStatus(f"an SFTP answer to request {got}, never asked")
            self._due.discard(got)
            self._answers[got] = (kind, body)
        return self._answers.pop(rid)
