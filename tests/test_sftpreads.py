"""The pipelined SFTP reader against every answer the draft allows and some it does not,
from a scripted peer (the contract suite covers it against a real sshd)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest

from conda_ferry.gateways.sftpreads import (
    MOST_READ,
    SAFE_READ,
    PipelinedReads,
    SFTPStatus,
    read_size,
)
from tests.sftppeer import Behaviour, Peer

DATA = os.urandom(300_000)


def _read(peer: Peer, offset: int = 0, chunk: int = 32768, piece: int = 1 << 20) -> bytes:
    return peer.fetch(offset, chunk, lambda: piece)


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour(), Behaviour(short=True), Behaviour(shuffle=True), Behaviour(True, True)],
    ids=["in-order", "short", "shuffled", "short-shuffled"],
)
@pytest.mark.parametrize("offset", [0, 1, 299_999, 300_000])
def test_every_allowed_answer_gives_the_same_bytes(behaviour: Behaviour, offset: int) -> None:
    peer = Peer(DATA, behaviour, seed=offset)
    try:
        assert _read(peer, offset, chunk=4000, piece=5000) == DATA[offset:]
    finally:
        peer.close()


def test_a_file_that_shrank_ends_where_its_bytes_do() -> None:
    peer = Peer(DATA, Behaviour(short=True, shuffle=True, cut=123_457))
    try:
        assert _read(peer, 1000, chunk=1000) == DATA[1000:123_457]
    finally:
        peer.close()


@pytest.mark.parametrize(
    ("code", "error"), [(2, FileNotFoundError), (3, PermissionError), (4, SFTPStatus)]
)
def test_an_error_status_is_the_matching_os_error(code: int, error: type[OSError]) -> None:
    peer = Peer(DATA, Behaviour(shuffle=True, fail_at=7, fail_code=code))
    try:
        with pytest.raises(error, match="said the peer"):
            _read(peer, chunk=1000)
    finally:
        peer.close()


def test_the_session_serves_again_after_a_stream_closed_early() -> None:
    peer = Peer(DATA, Behaviour(shuffle=True))
    try:
        reads = PipelinedReads(peer.sock, b"handle", 0, len(DATA), 1000)
        assert reads.read(10) == DATA[:10]
        reads.close()  # answers still due are read and dropped
        assert _read(peer, 5) == DATA[5:]
    finally:
        peer.close()


def _huge(answer: bytes) -> bytes:
    return struct.pack(">I", 1 << 31) + answer[4:]


def _unasked(answer: bytes) -> bytes:
    return answer[:5] + b"\x00\x00\x00\x07" + answer[9:]


@pytest.mark.parametrize(
    ("damage", "error", "words"),
    [
        (lambda b: b[: len(b) // 2], EOFError, "ended"),
        (_huge, SFTPStatus, "of 2147483648 bytes"),
        (_unasked, SFTPStatus, "never asked"),
        (lambda b: b[:9] + b"\x00\x00\x00\x01" + b[13:], SFTPStatus, "lengths disagree"),
    ],
    ids=["cut-off", "huge", "unasked", "lengths"],
)
def test_a_lying_answer_fails_the_stream(
    damage: Callable[[bytes], bytes], error: type[Exception], words: str
) -> None:
    peer = Peer(DATA, Behaviour(lie_at=3, damage=damage))
    try:
        with pytest.raises(error, match=words):
            _read(peer, chunk=1000)
    finally:
        peer.close()


@pytest.mark.parametrize(("most", "size"), [(0, MOST_READ), (1000, 1000), (1 << 40, MOST_READ)])
def test_reads_are_as_large_as_the_server_allows(most: int, size: int) -> None:
    peer = Peer(DATA, Behaviour(most_read=most))
    try:
        assert read_size(peer.sock) == size
        assert _read(peer, chunk=size) == DATA  # and the session still serves
    finally:
        peer.close()


def test_a_server_without_the_limits_extension_gets_the_safe_size() -> None:
    peer = Peer(DATA, Behaviour(most_read=None))
    try:
        assert read_size(peer.sock) == SAFE_READ
        assert _read(peer, chunk=SAFE_READ) == DATA
    finally:
        peer.close()
