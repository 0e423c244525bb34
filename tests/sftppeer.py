"""A scripted SFTP server over a socket pair, for the pipelined reader: it answers
``limits@openssh.com`` and READ as the draft allows (short answers, any order, end of
file early) and, asked to, lies (an error status, damaged bytes, then the end of its answers).

A real sshd answers honestly and in order; this peer is how the tests reach every
answer the draft permits and every one it does not.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from conda_ferry.gateways.sftpreads import PipelinedReads

_HEAD = struct.Struct(">IBI")
_U32 = struct.Struct(">I")


@dataclass
class Behaviour:
    """How the peer answers. ``cut``: the file's bytes end there (it shrank since it was
    opened). ``most_read``: what ``limits@openssh.com`` says, if the server
    knows it. ``fail_at``: the nth read gets ``fail_code`` as its status. ``lie_at``:
    the nth answer goes out damaged by ``damage``, and the peer says no more."""

    short: bool = False
    shuffle: bool = False
    cut: int | None = None
    most_read: int | None = 255 * 1024  # None: no limits@openssh.com
    fail_at: int | None = None
    fail_code: int = 4
    lie_at: int | None = None
    damage: Callable[[bytes], bytes] | None = None


def _packet(kind: int, rid: int, body: bytes) -> bytes:
    return _HEAD.pack(len(body) + 5, kind, rid) + body


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _status(rid: int, code: int) -> bytes:
    return _packet(101, rid, struct.pack(">I", code) + _string(b"said the peer") + _string(b""))


class Peer:
    """Serves ``data`` on one end of a socket pair in a thread; ``sock`` is the other end."""

    def __init__(self, data: bytes, behaviour: Behaviour, seed: int = 0) -> None:
        self.sock, self._mine = socket.socketpair()
        self._data, self._how = data, behaviour
        self._rng = random.Random(seed)
        self._answers = 0
        self._reads = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def fetch(self, offset: int, chunk: int, piece: Callable[[], int]) -> bytes:
        """The file from ``offset`` through the pipelined reader, asking ``piece()``
        bytes a call; closed whatever happens, as the gateway's stream is."""
        reads = PipelinedReads(self.sock, b"handle", offset, len(self._data), chunk)
        parts = []
        try:
            while part := reads.read(size := piece()):
                assert len(part) <= size
                parts.append(part)
        finally:
            reads.close()
        return b"".join(parts)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the peer did not end"

    def _serve(self) -> None:
        buffer = b""
        try:
            while more := self._mine.recv(1 << 16):
                answers: list[bytes] = []
                buffer = self._take(buffer + more, answers)
                # requests still arriving join the batch, so that shuffling mixes them
                while self._how.shuffle and select.select([self._mine], [], [], 0)[0]:
                    if not (more := self._mine.recv(1 << 16)):
                        break
                    buffer = self._take(buffer + more, answers)
                if self._how.shuffle:
                    self._rng.shuffle(answers)
                if not self._send(answers):
                    return
        except OSError:
            return
        finally:
            self._mine.close()

    def _take(self, buffer: bytes, answers: list[bytes]) -> bytes:
        """Answers the whole requests in ``buffer``; the rest waits for more bytes."""
        while len(buffer) >= 4 and len(buffer) >= (size := 4 + _U32.unpack_from(buffer)[0]):
            answers.append(self._answer(buffer[:size]))
            buffer = buffer[size:]
        return buffer

    def _send(self, answers: list[bytes]) -> bool:
        """False once the peer has lied and stopped answering."""
        for answer in answers:
            self._answers += 1
            if self._how.lie_at is not None and self._answers >= self._how.lie_at:
                damage = self._how.damage or (lambda b: b[: len(b) // 2])
                self._mine.sendall(damage(answer))
                self._mine.shutdown(socket.SHUT_WR)
                while self._mine.recv(1 << 16):  # deaf from now on
                    pass
                return False
            self._mine.sendall(answer)
        return True

    def _answer(self, request: bytes) -> bytes:
        _, kind, rid = _HEAD.unpack_from(request)
        body = request[_HEAD.size :]
        if kind == 200 and self._how.most_read is not None:
            # limits@openssh.com: packet, read, write, handles
            return _packet(201, rid, struct.pack(">QQQQ", 1 << 18, self._how.most_read, 0, 0))
        if kind != 5:
            return _status(rid, 8)  # unsupported
        (handle,) = _U32.unpack_from(body)
        offset, length = struct.unpack_from(">QI", body, 4 + handle)
        self._reads += 1
        if self._reads == self._how.fail_at:
            return _status(rid, self._how.fail_code)
        end = len(self._data) if self._how.cut is None else self._how.cut
        if offset >= end:
            return _status(rid, 1)
        take = min(length, end - offset)
        if self._how.short and take > 1:
            take = self._rng.randint(1, take)
        return _packet(103, rid, _string(self._data[offset : offset + take]))
