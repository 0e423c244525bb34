"""Copy one file between gateways, verified as it streams, published atomically.

Every writer that moves package bytes (sync, publish, import, ``ferry cp``) goes
through here, so "a file exists at its final name only if its bytes matched" is
promised in one place.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, BinaryIO

import msgspec

from .base import FileInfo, Gateway
from .errors import GatewayError, IntegrityError
from .streams import CHUNK, VerifyingReader, bytes_problem

log = logging.getLogger("ferry.gateways")
SMALL = 1 << 20  # bytes: a file at most this large may be copied by copy_prefetched


class Expected(msgspec.Struct, frozen=True, gc=False):
    """What the bytes must be; a field left None is not checked."""

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


class Copied(msgspec.Struct, frozen=True, gc=False):
    info: FileInfo  # the written file as the target reports it
    size: int
    sha256: str


def copy_stream(
    open_source: Callable[[], BinaryIO],
    what: str,
    target: Gateway,
    path: str,
    expect: Expected,
    *,
    durable: bool = True,
    attempts: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Copied:
    """Stream ``open_source()`` into ``target``/``path``; a mismatch aborts the write.

    ``attempts`` > 1 fetches a body that failed its check again: corruption in
    transit is worth one more try, a source that is corrupt at rest is not.
    """
    for attempt in range(attempts):
        reader = VerifyingReader(
            open_source(), what, expect.size, expect.sha256, expect.md5, progress
        )
        try:
            with reader:
                info = target.write_atomic(path, reader.as_binary(), durable)
        except IntegrityError:
            if attempt + 1 >= attempts:
                raise
            log.warning("%s failed its check; fetching it again", what)
            continue
        return Copied(info, reader.count, reader.sha256.hexdigest())
    raise AssertionError("unreachable")


def copy_file(
    source: Gateway, source_path: str, target: Gateway, path: str, expect: Expected, **kw: Any
) -> Copied:
    """:func:`copy_stream` from a file of ``source``; ``kw`` as there."""
    opener = functools.partial(source.open_read, source_path)
    return copy_stream(opener, source.display(source_path), target, path, expect, **kw)


def copy_prefetched(
    source: Gateway,
    source_path: str,
    target: Gateway,
    path: str,
    expect: Expected,
    durable: bool = True,
) -> Copied | None:
    """:func:`copy_file`'s short way for a small file whose bytes have all arrived (a
    prefetched HTTP answer): checked and written in one call each, without the
    layers of a stream that may break, resume or run to gigabytes (measured: half
    the Python of a 20 kB package). None where there is no such answer, or it fails
    its check: :func:`copy_file` then copies it, with its retries and messages.
    A larger file is streamed as it comes (it is written, and its progress told, as
    it arrives; its bytes cost far more than the layers)."""
    if expect.size is None or expect.size > SMALL:
        return None
    data = source.read_prefetched(source_path)
    if data is None:
        return None
    problem, sha256 = bytes_problem(data, expect.size, expect.sha256, expect.md5)
    if problem:
        log.debug("%s: %s; fetching it again", source.display(source_path), problem)
        return None
    return Copied(target.write_bytes(path, data, durable), len(data), sha256)


def matches(gateway: Gateway, path: str, expect: Expected) -> bool:
    """Whether the stored file has the size and digests ``expect`` names (read once)."""
    try:
        with VerifyingReader(
            gateway.open_read(path), gateway.display(path), expect.size, expect.sha256, expect.md5
        ) as reader:
            while reader.read(CHUNK):
                pass
    except GatewayError:
        return False
    return True
