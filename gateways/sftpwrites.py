"""Pipelined SFTP writes whose every answer is heard.

paramiko's pipelined writes (``SFTPFile.set_pipelined``) read no answer until a
hundred are due, and its ``close`` reads past the rest unlooked at: a server that
refuses a write (its disk or a quota full) goes unheard, and a short file would be
renamed into place as if whole. Here each write's answer is read, in whatever order
the server sends it, and the first refusal raises before anything is renamed.
paramiko still frames the requests and matches each answer to its request.
"""

from __future__ import annotations

from typing import BinaryIO

import paramiko
from paramiko.sftp import CMD_STATUS, CMD_WRITE, int64

from .streams import CHUNK

WRITE_SIZE = 32768  # what every server takes (the draft's minimum packet size)
IN_FLIGHT = 128  # writes sent and not yet answered: 4 MB, a fast link's round trip


class Refusal(OSError):
    """A write the server answered with anything but success."""


class _Answers:
    """Where paramiko hands the answers to one file's writes: the first that is not
    success is kept, to be raised in the writer's thread."""

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self._sftp = sftp
        self.heard = 0
        self.error: BaseException | None = None

    def _async_response(self, kind: int, message: paramiko.Message, num: int) -> None:
        self.heard += 1
        if self.error is not None:
            return
        if kind != CMD_STATUS:
            self.error = paramiko.SFTPError(f"an answer of type {kind} to a write")
            return
        try:
            self._sftp._convert_status(message)  # type: ignore[attr-defined]
        except (OSError, EOFError) as exc:  # a missing directory or a permission: as said
            said = str(exc) or "a failure, in no words"
            self.error = exc if isinstance(exc, OSError) and exc.errno else Refusal(said)


def write_all(sftp: paramiko.SFTPClient, handle: bytes, stream: BinaryIO) -> int:
    """Write ``stream`` to the open file ``handle`` from its start, many writes in
    flight; the count of bytes, once the server has accepted every one."""
    answers = _Answers(sftp)
    sent = 0

    def hear(most: int) -> None:
        while answers.error is None and sent - answers.heard > most:
            sftp._read_response()  # type: ignore[attr-defined]
        if answers.error is not None:
            raise answers.error

    offset = 0
    while chunk := stream.read(CHUNK):
        for at in range(0, len(chunk), WRITE_SIZE):
            piece = chunk[at : at + WRITE_SIZE]
            sftp._async_request(answers, CMD_WRITE, handle, int64(offset), piece)  # type: ignore[attr-defined]
            sent += 1
            offset += len(piece)
            hear(IN_FLIGHT)
    hear(0)
    return offset
