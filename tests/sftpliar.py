"""A lying SFTP server on stdin and stdout, run in place of ``ssh`` (the SFTP gateway
starts ``ssh ... -s HOST sftp`` and speaks SFTP over its pipes), for the ``sftpserver``
fuzzer: listings, attributes, handles, statuses and bodies, right or not.

Standard library only, so that each session starts in milliseconds. Its lies are
drawn from ``FERRY_LIAR_SEED`` and a session counter kept in ``FERRY_LIAR_DIR``, so a
fuzzer's seed replays every session. The tree it serves: ``/root/pkg.conda`` (the
bytes in ``FERRY_LIAR_DIR/body``), ``/root/sub/a.conda``.

It also takes writes as OpenSSH's server does (OPEN for writing, WRITE, MKDIR, REMOVE,
RENAME, ``posix-rename@openssh.com``), in a tree that lasts the session, each answer
right or not. A write that names a path outside ``/root`` is appended to
``FERRY_LIAR_DIR/escapes``: whatever a server says, a client writes only where it was
pointed.

With ``FERRY_LIAR_HONEST`` set it tells no lie, and ``FERRY_LIAR_DISK`` bytes fill
its disk: a write past them is refused as OpenSSH's server refuses one on a full disk.
"""

from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

_U32, _U64 = struct.Struct(">I"), struct.Struct(">Q")
FILE, DIR = 0o100644, 0o040755
WRITE, EXCL = 0x02, 0x20  # SSH_FXF_WRITE, SSH_FXF_EXCL


class Truthful(random.Random):
    """Chance that never falls below a lie's odds."""

    getrandbits = random.Random.getrandbits  # choice() still uses it, not random()

    def random(self) -> float:
        return 1.0


NAMES = [b"../x.conda", b"a/b.conda", b"", b".", b"..", b"\xff\xfe.conda", b"x" * 5000, b"ok.conda"]


def _string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _text(data: bytes, at: int) -> tuple[bytes, int]:
    """The string at ``at``, and where the next field starts."""
    (length,) = _U32.unpack_from(data, at)
    if at + 4 + length > len(data):
        raise struct.error("a string longer than its packet")
    return data[at + 4 : at + 4 + length], at + 4 + length


def _attrs(rng: random.Random, size: int, mode: int) -> bytes:
    """ATTRS: size, permissions and times, or a lie about them."""
    if rng.random() < 0.2:
        size = rng.choice([0, 1 << 63, (1 << 64) - 1, size + 1, size // 2])
    if rng.random() < 0.1:
        mode = rng.choice([DIR, FILE, 0, 0o120777, 0xFFFFFFFF])
    flags, body = 0x1 | 0x4 | 0x8, _U64.pack(size) + _U32.pack(mode) + _U32.pack(0) * 2
    if rng.random() < 0.1:
        flags |= 0x80000000  # extended pairs: a count that lies
        body += _U32.pack(rng.choice([1, 1 << 30])) + _string(b"k") + _string(b"v")
    if rng.random() < 0.05:
        flags = rng.randrange(1 << 32)
    return _U32.pack(flags) + body


class Liar:
    def __init__(self, rng: random.Random, body: bytes, escapes: Path, disk: int) -> None:
        self.rng, self.body, self.escapes, self.disk = rng, body, escapes, disk
        self.files = {"/root/pkg.conda": body, "/root/sub/a.conda": b"tiny"}
        self.dirs = {"/root": ["pkg.conda", "sub"], "/root/sub": ["a.conda"]}
        self.handles: dict[bytes, str] = {}
        self.writing: set[bytes] = set()  # handles open for writing
        self.listed: set[bytes] = set()

    def _path(self, raw: bytes) -> str:
        path = raw.decode("utf-8", "replace")
        return path if path.startswith("/") else f"/root/{path}".rstrip("/")

    def _status(self, code: int) -> tuple[int, bytes]:
        message = self.rng.choice([b"said the liar", b"\xff\xfe", b"", b"two\nlines\x1b[2J"])
        return 101, _U32.pack(code) + _string(message) + _string(b"")

    def _stat(self, path: str) -> tuple[int, bytes]:
        if path in self.files:
            return 105, _attrs(self.rng, len(self.files[path]), FILE)
        if path in self.dirs:
            return 105, _attrs(self.rng, 4096, DIR)
        return self._status(2)

    def _names(self, path: str) -> tuple[int, bytes]:
        entries = []
        for name in self.dirs[path]:
            full = f"{path}/{name}"
            data = self.files.get(full)
            raw = name.encode()
            if self.rng.random() < 0.15:
                raw = self.rng.choice(NAMES)
            attrs = _attrs(
                self.rng, len(data) if data is not None else 4096, DIR if data is None else FILE
            )
            entries.append(_string(raw) + _string(b"-rw-r--r-- 1 u g " + raw) + attrs)
        count = len(entries)
        if self.rng.random() < 0.1:
            count = self.rng.choice([0, count + 3, 1 << 31])
        return 104, _U32.pack(count) + b"".join(entries)

    def _outside(self, path: str) -> bool:
        """Whether ``path`` is outside the root (recorded as an escape)."""
        if path.startswith("/root/") and not {"", ".", ".."} & set(path[6:].split("/")):
            return False
        with self.escapes.open("a") as out:
            out.write(f"{path!r}\n")
        return True

    def _refused(self, path: str) -> tuple[int, bytes] | None:
        """Why a write may not change ``path``: outside the root, or its directory
        missing; None if it may."""
        if self._outside(path):
            return self._status(3)
        return None if path.rpartition("/")[0] in self.dirs else self._status(2)

    def _add(self, path: str, data: bytes | None) -> None:
        """``path`` made a file holding ``data``, or a directory (None)."""
        parent, _, name = path.rpartition("/")
        if path not in self.files and path not in self.dirs:
            self.dirs[parent].append(name)
        if data is None:
            self.dirs[path] = []
        else:
            self.files[path] = data

    def _drop(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        self.files.pop(path, None)
        if name in self.dirs.get(parent, []):
            self.dirs[parent].remove(name)

    def _rename(self, data: bytes) -> tuple[int, bytes]:
        old, at = _text(data, 0)
        source, target = self._path(old), self._path(_text(data, at)[0])
        refused = self._refused(source) or self._refused(target)
        if refused is not None:
            return refused
        if source not in self.files or target in self.dirs:
            return self._status(2)
        body = self.files[source]
        self._drop(source)
        self._add(target, body)
        return self._status(0)

    def _open_for_writing(self, path: str, flags: int) -> tuple[int, bytes]:
        refused = self._refused(path)
        if refused is not None or path in self.dirs:
            return refused or self._status(4)
        if flags & EXCL and path in self.files:
            return self._status(4)
        handle = b"w%d" % len(self.writing)  # never one a read handle has ("h...")
        self.handles[handle] = path
        self.writing.add(handle)
        self._add(path, b"")
        return 102, _string(handle)

    def _change(self, kind: int, data: bytes) -> tuple[int, bytes] | None:
        """The right answer to a request that changes the tree; None for any other."""
        if kind == 3:  # OPEN
            raw, at = _text(data, 0)
            (flags,) = _U32.unpack_from(data, at)
            return self._open_for_writing(self._path(raw), flags) if flags & WRITE else None
        if kind == 6:  # WRITE
            handle, at = _text(data, 0)
            (offset,) = _U64.unpack_from(data, at)
            chunk = _text(data, at + 8)[0]
            path = self.handles.get(handle, "")
            if handle not in self.writing or path not in self.files or offset > 1 << 32:
                return self._status(4)
            body = self.files[path].ljust(offset, b"\0")
            body = body[:offset] + chunk + body[offset + len(chunk) :]
            if sum(map(len, self.files.values())) - len(self.files[path]) + len(body) > self.disk:
                return 101, _U32.pack(4) + _string(b"Failure") + _string(b"")  # a full disk
            self.files[path] = body
            return self._status(0)
        if kind in (13, 15):  # REMOVE, RMDIR
            path = self._path(_text(data, 0)[0])
            if self._outside(path):
                return self._status(3)
            if path not in (self.files if kind == 13 else self.dirs):
                return self._status(2)
            self._drop(path)
            self.dirs.pop(path, None)
            return self._status(0)
        if kind == 14:  # MKDIR
            path = self._path(_text(data, 0)[0])
            if path in self.files or path in self.dirs:  # the root among them
                return self._status(4)
            refused = self._refused(path)
            if refused is not None:
                return refused
            self._add(path, None)
            return self._status(0)
        if kind == 18:  # RENAME
            return self._rename(data)
        if kind == 200 and _text(data, 0)[0] == b"posix-rename@openssh.com":
            return self._rename(data[_text(data, 0)[1] :])
        return None

    def answer(self, kind: int, rid: int, data: bytes) -> tuple[int, bytes]:
        """The right answer to one request."""
        changed = self._change(kind, data)
        if changed is not None:
            return changed
        if kind == 16:  # REALPATH
            path = self._path(_text(data, 0)[0])
            return 104, _U32.pack(1) + _string(path.encode()) + _string(b"") + _attrs(
                self.rng, 0, DIR
            )
        if kind in (17, 7):  # STAT, LSTAT
            return self._stat(self._path(_text(data, 0)[0]))
        if kind in (11, 3):  # OPENDIR, OPEN
            path = self._path(_text(data, 0)[0])
            if path not in (self.dirs if kind == 11 else self.files):
                return self._status(2)
            handle = b"h%d" % rid
            self.handles[handle] = path
            return 102, _string(handle)
        if kind == 12:  # READDIR
            handle = _text(data, 0)[0]
            if handle not in self.handles:
                return self._status(4)
            if handle in self.listed:
                return self._status(1)
            self.listed.add(handle)
            return self._names(self.handles[handle])
        if kind == 8:  # FSTAT
            handle = _text(data, 0)[0]
            return self._stat(self.handles.get(handle, ""))
        if kind == 5:  # READ
            handle, at = _text(data, 0)
            (offset,) = _U64.unpack_from(data, at)
            (length,) = _U32.unpack_from(data, at + 8)
            body = self.files.get(self.handles.get(handle, ""))
            if body is None:
                return self._status(4)
            if offset >= len(body):
                return self._status(1)
            return 103, _string(body[offset : offset + length])
        if kind == 4:  # CLOSE
            self.handles.pop(_text(data, 0)[0], None)
            return self._status(0)
        if kind == 200 and _text(data, 0)[0] == b"limits@openssh.com":
            return 201, _U64.pack(1 << 18) + _U64.pack(255 * 1024) + _U64.pack(1 << 18) + _U64.pack(
                64
            )
        return self._status(8)

    def lie(self, kind: int, body: bytes) -> tuple[int, bytes]:
        """Now and then, not the right answer: another status, another packet type,
        damaged or longer bytes."""
        roll = self.rng.random()
        if roll < 0.05:
            return self._status(self.rng.choice([1, 2, 3, 4, 5, 99]))
        if roll < 0.08:
            return self.rng.choice([101, 102, 103, 104, 105, 201, 7]), body
        if roll < 0.12 and body:
            at = self.rng.randrange(len(body))
            return kind, body[:at] + bytes([self.rng.randrange(256)]) + body[at + 1 :]
        if roll < 0.14:
            return kind, body + self.rng.randbytes(self.rng.randint(1, 300))
        if roll < 0.16:
            return kind, body[: self.rng.randrange(len(body) + 1)]
        return kind, body


def install(directory: Path, body: bytes, seed: int) -> dict[str, str]:
    """An ``ssh`` in ``directory`` that starts this liar serving ``body``; the
    environment that puts it first on the PATH."""
    ssh = directory / "ssh"
    ssh.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{__file__}"\n')
    ssh.chmod(0o755)
    (directory / "body").write_bytes(body)
    return {
        "PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}",
        "FERRY_LIAR_DIR": str(directory),
        "FERRY_LIAR_SEED": str(seed),
    }


def _read(count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = sys.stdin.buffer.read1(count - len(data))
        if not more:
            raise EOFError
        data += more
    return data


def serve() -> None:
    where = Path(os.environ["FERRY_LIAR_DIR"])
    counter = where / "sessions"
    session = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(session + 1))
    seed = int(os.environ["FERRY_LIAR_SEED"]) * 1_000_003 + session
    rng = Truthful(seed) if os.environ.get("FERRY_LIAR_HONEST") else random.Random(seed)
    disk = int(os.environ.get("FERRY_LIAR_DISK", 1 << 62))
    liar = Liar(rng, (where / "body").read_bytes(), where / "escapes", disk)
    out = sys.stdout.buffer
    try:
        (length,) = _U32.unpack(_read(4))
        _read(length)  # INIT
        version = _U32.pack(3) + b"".join(
            _string(name) + _string(b"1")
            for name in (b"limits@openssh.com", b"posix-rename@openssh.com")
        )
        out.write(_U32.pack(len(version) + 1) + b"\x02" + version)
        out.flush()
        while True:
            (length,) = _U32.unpack(_read(4))
            packet = _read(length)
            kind, rid, data = packet[0], _U32.unpack_from(packet, 1)[0], packet[5:]
            try:
                answer_kind, body = liar.lie(*liar.answer(kind, rid, data))
            except struct.error:
                answer_kind, body = liar._status(4)
            if rng.random() < 0.02:
                rid = rng.randrange(1 << 32)  # an answer to a request never made
            if rng.random() < 0.01:
                out.write(_U32.pack(1 << 31))  # a length no packet has, then silence
                out.flush()
                return
            message = bytes([answer_kind]) + _U32.pack(rid) + body
            wire = _U32.pack(len(message)) + message
            if rng.random() < 0.01:
                out.write(wire[: rng.randrange(len(wire))])  # cut, then gone
                out.flush()
                return
            out.write(wire)
            out.flush()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return


if __name__ == "__main__":
    serve()
