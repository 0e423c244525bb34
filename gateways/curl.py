"""libcurl (through pycurl) as the HTTP transport, read as pull streams.

Why not requests: a GET through it costs about a millisecond of Python under the GIL
(session merging, hooks, header objects), so eight workers fetching small packages
were bound by one core, not by the wire. libcurl does the protocol in C and hands
us a status line, headers and body chunks; the per-file cost left in Python is a
handful of calls.

Each transfer runs an easy handle on a multi handle of its own, driven from the
thread that reads the stream: ``read`` runs libcurl until a chunk has arrived, so
the gateway keeps its pull interface (retries, resume, verification and atomic
writes stay where they are) and nothing runs behind the caller's back. The pair is
pooled: the multi handle keeps its connections open between transfers.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pycurl

from .streams import RawStream

# Body bytes libcurl may buffer ahead of the reader before it is paused.
AHEAD = 4 << 20
_REDIRECTS = 10
_WEB = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS


class CurlError(OSError):
    """A failed transfer, as the exception kind that names it (see :func:`_failure`)."""


def _failure(code: int, message: str) -> BaseException:
    """libcurl's error code as the Python exception that says the same, so that one
    wording of network problems serves every protocol."""
    kinds: dict[int, type[BaseException]] = {
        pycurl.E_COULDNT_CONNECT: ConnectionRefusedError,
        pycurl.E_COULDNT_RESOLVE_HOST: socket.gaierror,
        pycurl.E_COULDNT_RESOLVE_PROXY: socket.gaierror,
        pycurl.E_OPERATION_TIMEDOUT: TimeoutError,
        pycurl.E_RECV_ERROR: ConnectionResetError,
        pycurl.E_SEND_ERROR: ConnectionResetError,
        pycurl.E_GOT_NOTHING: EOFError,
        pycurl.E_PARTIAL_FILE: EOFError,
    }
    kind = kinds.get(code)
    if kind is ConnectionRefusedError:
        return ConnectionRefusedError(errno.ECONNREFUSED, message)
    if kind is not None:
        return kind(message)
    error = CurlError(message)
    error.errno = code
    return error


TLS_FAILURES = {
    pycurl.E_SSL_CACERT,
    pycurl.E_SSL_CONNECT_ERROR,
    pycurl.E_SSL_CERTPROBLEM,
    getattr(pycurl, "E_SSL_CACERT_BADFILE", 77),
}
BAD_URL = {pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL}


class _Slot:
    def __init__(self) -> None:
        self.curl = pycurl.Curl()
        self.multi = pycurl.CurlMulti()


class CurlResponse(RawStream):
    """One transfer: ``status`` and ``headers`` (lower-case names) once it is open,
    then its body through ``read``. Raises :class:`CurlError` (or the matching
    built-in exception) when the transfer fails."""

    def __init__(self, slot: _Slot, release: Callable[[_Slot], None], timeout: float) -> None:
        super().__init__()
        self._slot, self._release, self._timeout = slot, release, timeout
        self.status = 0
        self.headers: dict[str, str] = {}
        self._headers_done = self._finished = self._paused = self._resuming = False
        self._header_end = False  # the blank line that ends the final answer's headers
        self._chunks: deque[bytes] = deque()
        self._ahead = 0
        self._heard = time.monotonic()
        slot.curl.setopt(pycurl.WRITEFUNCTION, self._body)
        slot.curl.setopt(pycurl.HEADERFUNCTION, self._header)

    # -- libcurl's callbacks ----------------------------------------------------------
    def _header(self, line: bytes) -> None:
        self._heard = time.monotonic()
        text = line.decode("latin-1").rstrip("\r\n")
        if text.startswith("HTTP/"):
            parts = text.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.headers = {}
        elif text:
            name, _, value = text.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        elif not (self.status < 200 or self._redirected()):
            self._headers_done = self._header_end = True  # the final answer's, not a redirect's

    def _redirected(self) -> bool:
        return 300 <= self.status < 400 and "location" in self.headers

    def _body(self, chunk: bytes) -> int | None:
        self._heard = time.monotonic()
        if self._ahead > AHEAD and not self._resuming:
            self._paused = True
            return pycurl.WRITEFUNC_PAUSE  # delivered again once the reader catches up
        self._headers_done = True
        self._chunks.append(chunk)
        self._ahead += len(chunk)
        return None

    # -- driving ------------------------------------------------------------------------
    def start(self) -> CurlResponse:
        self._slot.multi.add_handle(self._slot.curl)
        try:
            self._pump(lambda: self._headers_done)
        except BaseException:
            self.close()
            raise
        return self

    def _pump(self, enough: Callable[[], bool]) -> None:
        """Run the transfer until ``enough()`` or it ends; silence longer than the
        timeout fails it."""
        try:
            while not (enough() or self._finished):
                self._step(enough)
        except pycurl.error as exc:
            raise _failure(*exc.args) from None

    def _step(self, enough: Callable[[], bool]) -> None:
        multi = self._slot.multi
        if self._paused and not self._chunks:
            # what libcurl held back (one network read's worth) comes in at once
            self._paused, self._resuming = False, True
            try:
                self._slot.curl.pause(pycurl.PAUSE_CONT)
            finally:
                self._resuming = False
            return
        code, running = multi.perform()
        while code == pycurl.E_CALL_MULTI_PERFORM:
            code, running = multi.perform()
        if not running:
            self._finish()
        elif not enough():
            if time.monotonic() - self._heard > self._timeout:
                raise TimeoutError(f"no answer for {self._timeout:g}s")
            multi.select(min(self._timeout, 1.0))

    def _finish(self) -> None:
        self._finished = self._headers_done = True
        _, _, failed = self._slot.multi.info_read()
        if self.status == 0:
            self.status = int(self._slot.curl.getinfo(pycurl.RESPONSE_CODE))
        for _, code, message in failed:
            raise _failure(code, message)
        if not self._header_end:  # libcurl takes a close inside the headers for an end
            raise EOFError("the connection closed inside the answer's headers")

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        self._pump(lambda: bool(self._chunks))
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft()
        if len(chunk) > size:
            chunk, rest = chunk[:size], chunk[size:]
            self._chunks.appendleft(rest)
        self._ahead -= len(chunk)
        return chunk

    def close(self) -> None:
        if not self.closed:
            slot, self._slot = self._slot, None  # type: ignore[assignment]
            slot.multi.remove_handle(slot.curl)  # an unfinished transfer is abandoned
            self._release(slot)
        super().close()


class CurlPool:
    """Pooled transfers to one site; ``configure`` sets what every request shares
    (credentials, TLS) on a handle that was just reset."""

    def __init__(self, configure: Callable[[pycurl.Curl], None], timeout: float) -> None:
        self._configure, self._timeout = configure, timeout
        self._free: list[_Slot] = []
        self._lock = threading.Lock()

    def _take(self) -> _Slot:
        with self._lock:
            return self._free.pop() if self._free else _Slot()

    def _give(self, slot: _Slot) -> None:
        with self._lock:
            self._free.append(slot)

    def open(self, method: str, url: str, headers: dict[str, str]) -> CurlResponse:
        """Start a request and return once its final headers are in (or it failed).
        The body comes as served: a Content-Encoding is the caller's to undo."""
        slot = self._take()
        curl = slot.curl
        curl.reset()
        options: dict[int, Any] = {
            pycurl.URL: url,
            pycurl.NOSIGNAL: 1,
            pycurl.FOLLOWLOCATION: 1,
            pycurl.MAXREDIRS: _REDIRECTS,
            pycurl.PROTOCOLS: _WEB,
            pycurl.REDIR_PROTOCOLS: _WEB,
            pycurl.CONNECTTIMEOUT_MS: max(1, int(self._timeout * 1000)),
            pycurl.TCP_KEEPALIVE: 1,
            pycurl.HTTP_CONTENT_DECODING: 0,
            pycurl.BUFFERSIZE: 256 << 10,  # fewer, larger chunks
            pycurl.HTTPHEADER: [f"{k}: {v}" for k, v in headers.items()],
        }
        if method == "HEAD":
            options[pycurl.NOBODY] = 1
        try:
            for option, value in options.items():
                curl.setopt(option, value)
            self._configure(curl)
        except BaseException:
            self._give(slot)
            raise
        return CurlResponse(slot, self._give, self._timeout).start()

    def close(self) -> None:
        with self._lock:
            for slot in self._free:
                slot.curl.close()
                slot.multi.close()
            self._free.clear()
