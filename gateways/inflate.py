"""Undo a gzip Content-Encoding as the body streams, never beyond a bounded ratio.

Ours rather than the transport's: the output of each step is capped, so a body that
expands a thousandfold (a decompression bomb) is refused after a few MB instead of
filling the memory first, and bodies of several gzip members (which some servers
and proxies send) decode whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from .errors import ProtocolError
from .streams import CHUNK, MAX_EXPANSION, RawStream, expansion_limit

_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS  # detect the header: gzip, or zlib for "deflate"


class Inflating(RawStream):
    """The decoded bytes of ``read``'s gzip (or zlib) body; ``close`` closes the source."""

    def __init__(self, read: Callable[[int], bytes], close: Callable[[], None], what: str):
        super().__init__()
        self._read, self._close, self._what = read, close, what
        self._inflate = zlib.decompressobj(_GZIP_OR_ZLIB)
        self._fed = False  # the current member has started
        self._wire = self._decoded = 0

    def _next(self) -> bytes:
        data = self._read(CHUNK)
        self._wire += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while True:
            inflate = self._inflate
            if inflate.eof:  # a member ended; another may follow
                data = inflate.unused_data or self._next()
                self._inflate, self._fed = zlib.decompressobj(_GZIP_OR_ZLIB), False
            else:
                data = inflate.unconsumed_tail or self._next()
            if not data:
                if self._fed:
                    raise EOFError(f"{self._what}: the gzip body ends early")
                return b""
            self._fed = True
            try:
                out = self._inflate.decompress(data, max(1, size))
            except zlib.error:
                raise ProtocolError(self._what, "the gzip Content-Encoding is corrupt") from None
            self._decoded += len(out)
            if self._decoded > expansion_limit(self._wire):
                raise ProtocolError(
                    self._what,
                    f"the Content-Encoding expands more than {MAX_EXPANSION}-fold "
                    "(a decompression bomb?)",
                    "refused; nothing was written",
                )
            if out:
                return out

    def close(self) -> None:
        if not self.closed:
            self._close()
        super().close()
