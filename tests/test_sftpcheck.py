"""SFTP answers checked before paramiko parses them (``gateways/sftpcheck.py``): the
lies the ``sftpserver`` fuzzer tells at random, each told once here on purpose."""

from __future__ import annotations

import struct

import paramiko
import pytest

from conda_ferry.gateways.sftpcheck import checked

RID = struct.pack(">I", 7)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _attrs(size: int = 10, extended: int | None = None) -> bytes:
    flags = 0x1 | (0x80000000 if extended is not None else 0)
    body = struct.pack(">IQ", flags, size)
    if extended is not None:
        body += struct.pack(">I", extended) + _string(b"k") + _string(b"v")
    return body


def _names(*entries: tuple[bytes, bytes], count: int | None = None) -> bytes:
    body = b"".join(_string(name) + _string(long) + _attrs() for name, long in entries)
    return RID + struct.pack(">I", len(entries) if count is None else count) + body


def _parsed_names(data: bytes) -> list[str]:
    message = paramiko.Message(data)
    message.get_int()  # request id
    found = []
    for _ in range(message.get_int()):
        found.append(message.get_text())
        message.get_text()
        paramiko.SFTPAttributes._from_msg(message)
    return found


def test_a_well_formed_answer_passes_as_it_is() -> None:
    data = _names((b"a.conda", b"-rw a.conda"), (b"sub", b"drwx sub"))
    assert checked(104, data) is data
    assert checked(105, RID + _attrs(extended=1)) == RID + _attrs(extended=1)
    assert checked(103, b"anything") == b"anything"  # DATA: no counts to check


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (104, _names((b"a.conda", b""), count=1 << 31)),  # paramiko: 2**31 empty names
        (104, _names((b"a.conda", b""), count=2)),
        (105, RID + _attrs(extended=1 << 30)),  # paramiko: minutes of empty pairs
        (104, RID + struct.pack(">I", 1) + struct.pack(">I", 1000) + b"short"),
        (105, RID + b"\x00\x00"),
    ],
)
def test_counts_past_the_end_are_refused_before_parsing(kind: int, data: bytes) -> None:
    with pytest.raises(paramiko.SFTPError, match="counts past its end"):
        checked(kind, data)


def test_names_that_are_not_utf8_are_left_out_and_long_names_emptied() -> None:
    data = _names((b"\xff.conda", b"x"), (b"a.conda", b"-rw \xe9 a.conda"), (b"b.conda", b"ok"))
    assert _parsed_names(checked(104, data)) == ["a.conda", "b.conda"]


def test_a_status_keeps_its_code_when_its_words_are_not_utf8() -> None:
    data = RID + struct.pack(">I", 2) + _string(b"no \xff file") + _string(b"en")
    message = paramiko.Message(checked(101, data))
    assert (message.get_int(), message.get_int()) == (7, 2)
    assert message.get_text() == "no \ufffd file"
    assert message.get_text() == "en"


def test_a_status_without_words_passes_as_servers_send_it() -> None:
    data = RID + struct.pack(">I", 2)
    assert checked(101, data) is data
