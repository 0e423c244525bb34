"""SFTP answers checked for shape before paramiko parses them.

paramiko trusts the counts a server sends: a listing answer that claims 2**31 names
in a few bytes makes it build 2**31 empty entries (memory without bound), and
attributes that claim 2**30 extended pairs spin it for minutes, since its reader
pads a short answer with zeros. A server that lies must cost an error, not the
run, so every NAME and ATTRS answer is walked here first, each count and length
held against the bytes that are really there, and text paramiko would refuse
(not UTF-8) is mended or left out (SFTP v3, draft-ietf-secsh-filexfer-02).
"""

from __future__ import annotations

import struct
from typing import Any

import paramiko

_STATUS, _NAME, _ATTRS = 101, 104, 105
_U32 = struct.Struct(">I")
_FLAG_SIZE, _FLAG_UIDGID, _FLAG_PERMISSIONS, _FLAG_AMTIME = 0x1, 0x2, 0x4, 0x8
_FLAG_EXTENDED = 0x80000000
_FIXED = ((_FLAG_SIZE, 8), (_FLAG_UIDGID, 8), (_FLAG_PERMISSIONS, 4), (_FLAG_AMTIME, 8))
_SMALLEST_NAME = 12  # two empty strings and the attributes' flags
_SMALLEST_PAIR = 8  # an extended attribute: two empty strings


class _Short(Exception):
    """A count or length that reaches past the answer's end."""


def _count(data: bytes, at: int, smallest: int) -> tuple[int, int]:
    """A count of items of at least ``smallest`` bytes each that the rest can hold."""
    if at + 4 > len(data):
        raise _Short
    (count,) = _U32.unpack_from(data, at)
    if count * smallest > len(data) - at - 4:
        raise _Short
    return count, at + 4


def _string_end(data: bytes, at: int) -> int:
    length, at = _count(data, at, 1)
    return at + length


def _attrs_end(data: bytes, at: int) -> int:
    if at + 4 > len(data):
        raise _Short
    (flags,) = _U32.unpack_from(data, at)
    at += 4
    for flag, size in _FIXED:
        if flags & flag:
            at += size
    if flags & _FLAG_EXTENDED:
        pairs, at = _count(data, at, _SMALLEST_PAIR)
        for _ in range(2 * pairs):
            at = _string_end(data, at)
    if at > len(data):
        raise _Short
    return at


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _status(data: bytes) -> bytes:
    """A status whose words are not UTF-8 keeps its code (a missing file stays one)."""
    try:
        text_end = _string_end(data, 8)
    except _Short:  # words left out, as some servers do: paramiko reads them as none
        return data
    if _utf8(data[12:text_end]):
        return data
    words = data[12:text_end].decode(errors="replace").encode()
    return data[:8] + _U32.pack(len(words)) + words + data[text_end:]


def checked(kind: int, data: bytes) -> bytes:
    """A STATUS, NAME or ATTRS answer (``data``: from its request id on) as paramiko
    may parse it; other answers paramiko reads field by field, without counts. A
    name that is not UTF-8 (a file no URL of ferry's can name) is left out of a
    listing, and a long name that is not (``ls -l`` text, which nothing reads) is
    made empty, where paramiko would fail the whole listing on it."""
    try:
        if kind == _STATUS:
            return _status(data)
        if kind == _ATTRS:
            _attrs_end(data, 4)
        elif kind == _NAME:
            names, at = _count(data, 4, _SMALLEST_NAME)
            mended: list[tuple[int, int, bytes]] = []  # an entry's span, and what replaces it
            for _ in range(names):
                name_end = _string_end(data, at)
                long_end = _string_end(data, name_end)
                end = _attrs_end(data, long_end)
                if not _utf8(data[at + 4 : name_end]):
                    mended.append((at, end, b""))
                elif not _utf8(data[name_end + 4 : long_end]):
                    mended.append((at, end, data[at:name_end] + _U32.pack(0) + data[long_end:end]))
                at = end
            if mended:  # rare: the common listing passes without a copy
                parts, start = [data[:4], _U32.pack(names - sum(not m[2] for m in mended))], 8
                for begin, end, replacement in mended:
                    parts += [data[start:begin], replacement]
                    start = end
                return b"".join([*parts, data[start:]])
    except _Short:
        what = "names" if kind == _NAME else "attributes"
        raise paramiko.SFTPError(f"an answer ({what}) that counts past its end") from None
    return data


class StrictSFTPClient(paramiko.SFTPClient):
    """paramiko's SFTP client, with each answer's counts checked before it is parsed."""

    def _read_packet(self) -> tuple[int, Any]:
        kind, data = super()._read_packet()  # type: ignore[misc]
        return kind, checked(kind, data)

    def hardlink(self, old: str, new: str) -> None:
        """OpenSSH's ``hardlink@openssh.com``: ``new`` made a link to ``old``, an
        OSError if ``new`` exists or the server has no such extension."""
        self._request(paramiko.sftp.CMD_EXTENDED, "hardlink@openssh.com", old, new)  # type: ignore[attr-defined]
