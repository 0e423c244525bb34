"""libcurl (through pycurl) as the HTTP transport, read as pull streams.

Why not requests: a GET through it costs about a millisecond of Python under the GIL
(session merging, hooks, header objects), so eight workers fetching small packages
were bound by one core, not by the wire. libcurl does the protocol in C and hands
us a status line, headers and body chunks; the per-file cost left in Python is a
handful of calls.

Each thread's transfers share one multi handle, driven from that thread whenever it
reads a stream: ``read`` runs libcurl until a chunk has arrived, so the gateway
keeps its pull interface (retries, resume, verification and atomic writes stay
where they are), nothing runs behind the caller's back, and one thread can keep
many transfers on the wire (send the next requests ahead, then read them in turn) without
the lock contention of a thread per transfer. The multi handle keeps its
connections open between transfers.
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

from .errors import ProxyNotFound
from .streams import RawStream

# Body bytes libcurl may buffer ahead of the reader before it is paused.
AHEAD = 4 << 20
# seconds a request sent ahead may take to come whole for CurlPool.take_whole; a
# slower one is read as a stream, under the reader's min_rate
WHOLE_WITHIN = 5.0
MAX_AHEAD = 64  # requests sent ahead of being opened, per thread
# At most this much of a body in one read: libcurl hands it over 16 kB at a time, and
# a read of several pieces saves the digest and the write calls above it; 1 MB reads
# measured slower (each a fresh buffer out of cache: more memory traffic, page faults)
READ_AT_MOST = 64 << 10
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
        pycurl.E_COULDNT_RESOLVE_PROXY: ProxyNotFound,
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


def parse_head(lines: list[bytes]) -> tuple[int, dict[str, str], bool]:
    """The status and headers of the last answer in ``lines`` (a transfer's header
    lines, redirects and interim answers included), and whether the blank line that
    ends a final answer's headers has come."""
    status, ended = 0, False
    headers: dict[str, str] = {}
    for line in lines:
        text = line.decode("latin-1").rstrip("\r\n")
        if text.startswith("HTTP/"):
            parts = text.split(None, 2)
            code = parts[1] if len(parts) > 1 else ""
            status = int(code) if code.isascii() and code.isdigit() else 0
            headers, ended = {}, False
        elif text:
            name, _, value = text.partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            redirected = 300 <= status < 400 and "location" in headers
            ended = ended or not (status < 200 or redirected)
    return status, headers, ended


def _header_line(name: str, value: str) -> bytes:
    """A request header as bytes: a value read from a server's answer (an ETag, say)
    goes back as the bytes it came as, Latin-1 as :func:`parse_head` read it; pycurl
    would encode text as ASCII, and fail on anything else."""
    line = f"{name}: {value}"
    try:
        return line.encode("latin-1")
    except UnicodeEncodeError:
        return line.encode(errors="surrogateescape")


def _key(method: str, url: str, headers: dict[str, str]) -> tuple[str, ...]:
    return (method, url, *sorted(f"{k}: {v}" for k, v in headers.items()))


class _Driver:
    """One thread's transfers: a multi handle that runs them all (and keeps their
    connections open), and the easy handles idle between requests. pycurl's handles
    belong to one thread, so each thread gets its own driver."""

    def __init__(self) -> None:
        self.multi = pycurl.CurlMulti()
        self.idle: list[pycurl.Curl] = []
        self.active: dict[pycurl.Curl, CurlResponse] = {}
        self.early: dict[tuple[str, ...], CurlResponse] = {}  # requests sent ahead

    def perform(self) -> None:
        """Let libcurl move every transfer on, and tell the ones that ended."""
        code, _ = self.multi.perform()
        while code == pycurl.E_CALL_MULTI_PERFORM:
            code, _ = self.multi.perform()
        while True:
            queued, done, failed = self.multi.info_read()
            for curl in done:
                self.active[curl].ended(None)
            for curl, code, message in failed:
                self.active[curl].ended(_failure(code, message))
            if not queued:
                break

    def wait(self, seconds: float) -> None:
        """Until a transfer's connection has something to do, at most ``seconds``."""
        self.multi.select(seconds)

    def start(self, response: CurlResponse) -> None:
        self.active[response.curl] = response
        self.multi.add_handle(response.curl)

    def release(self, curl: pycurl.Curl) -> None:
        response = self.active.pop(curl, None)
        if response is not None:
            self.multi.remove_handle(curl)
            if not response.ended_already:  # abandoned mid-way (paused, perhaps): a
                curl.close()  # handle is reused without a reset, so this one goes
                return
        self.idle.append(curl)

    def close(self) -> None:
        self.early.clear()
        for curl in list(self.active):
            self.release(curl)
        for curl in self.idle:
            curl.close()
        self.idle.clear()
        self.multi.close()


class CurlResponse(RawStream):
    """One transfer: ``status`` and ``headers`` (lower-case names) once it is open,
    then its body through ``read``. Raises :class:`CurlError` (or the matching
    built-in exception) when the transfer fails.

    Reading one response drives every transfer its thread has open, so a reader that
    opens several before reading the first has them all on the wire at once; what
    they receive meanwhile is buffered, at most :data:`AHEAD` bytes each."""

    def __init__(self, driver: _Driver, curl: pycurl.Curl, timeout: float) -> None:
        super().__init__()
        self._driver, self.curl, self._timeout = driver, curl, timeout
        self.status = 0
        self.headers: dict[str, str] = {}
        # header lines as libcurl hands them over, read in one go (see _read_head):
        # a Python callback per line cost more than the rest of a small file's transfer
        self._lines: list[bytes] = []
        self._parsed = 0  # how many of them _read_head has seen
        self._headers_done = self._paused = self._resuming = False
        self._header_end = False  # the blank line that ends the final answer's headers
        self._ended = False
        self._error: BaseException | None = None
        self._chunks: deque[bytes] = deque()
        self._ahead = 0
        self._heard = self._sent = time.monotonic()
        curl.setopt(pycurl.WRITEFUNCTION, self._body)
        curl.setopt(pycurl.HEADERFUNCTION, self._lines.append)

    # -- libcurl's callback -------------------------------------------------------------
    def _body(self, chunk: bytes) -> int | None:
        self._heard = time.monotonic()
        if self._ahead > AHEAD and not self._resuming:
            self._paused = True
            return pycurl.WRITEFUNC_PAUSE  # delivered again once the reader catches up
        self._headers_done = True
        self._chunks.append(chunk)
        self._ahead += len(chunk)
        return None

    def _read_head(self) -> bool:
        """Bring ``status`` and ``headers`` up to the lines received; whether the final
        answer's headers (not a redirect's or an interim one's) are complete."""
        if len(self._lines) != self._parsed:
            self._heard = time.monotonic()
            self._parsed = len(self._lines)
            self.status, self.headers, self._header_end = parse_head(self._lines)
            self._headers_done = self._headers_done or self._header_end
        if self._ended and self.status == 0:  # no status line came
            self.status = self._code()
        return self._headers_done

    def _code(self) -> int:
        """The final answer's status, as libcurl read it."""
        return int(self.curl.getinfo(pycurl.RESPONSE_CODE))

    @property
    def ended_already(self) -> bool:
        return self._ended

    def ended(self, error: BaseException | None) -> None:
        """The driver's word that the transfer is over, and how. Its header lines are
        parsed when they are asked for: a body taken whole (:meth:`whole`) needs only
        its status (measured: 6-10 µs of a small package's Python spared)."""
        self._ended = self._headers_done = True
        lines = self._lines
        # a blank last line after a success: the final answer's headers ended (what
        # parse_head would find, without parsing them); anything else is parsed
        ended = bool(lines) and not lines[-1].strip() and 200 <= self._code() < 300
        if error is None and not ended:
            self._read_head()
            if not self._header_end:
                # libcurl takes a close inside the headers for the end of an empty body
                error = EOFError("the connection closed inside the answer's headers")
        self._error = error

    # -- driving ------------------------------------------------------------------------
    def wait_for_headers(self) -> CurlResponse:
        try:
            self._pump(self._read_head)
        except BaseException:
            self.close()
            raise
        self._read_head()  # the body may have come with them, in the same call
        return self

    def _pump(self, enough: Callable[[], bool]) -> None:
        """Run the transfers until ``enough()`` or this one ends; silence longer than
        the timeout while it is waited for fails it (a transfer opened ahead, that
        nobody read for a while, is not to blame for that)."""
        self._heard = time.monotonic()
        try:
            while not (enough() or self._ended):
                if self._paused and not self._chunks:
                    # what libcurl held back (one network read's worth) comes in at once
                    self._paused, self._resuming = False, True
                    try:
                        self.curl.pause(pycurl.PAUSE_CONT)
                    finally:
                        self._resuming = False
                    continue
                if time.monotonic() - self._heard > self._timeout:
                    raise TimeoutError(f"no answer for {self._timeout:g}s")
                self._driver.perform()
                if not (enough() or self._ended):
                    self._driver.wait(min(self._timeout, 1.0))
        except pycurl.error as exc:
            raise _failure(*exc.args) from None
        if self._ended and self._error is not None and not self._chunks:
            raise self._error

    def whole(self) -> bytes | None:
        """The body, once the transfer has ended well with a 200 and all of it is held
        here; None if it answered otherwise, broke after some bytes (a reader resumes
        from them), holds more than :data:`AHEAD` bytes or is still coming
        :data:`WHOLE_WITHIN` seconds after it was asked for (a trickle is a reader's
        to judge). Raises as :meth:`read` would where it failed before any byte, or
        fell silent."""
        late = self._sent + WHOLE_WITHIN
        self._pump(lambda: self._paused or time.monotonic() > late)
        if not self._ended or self._error is not None or self._code() != 200:
            return None
        return b"".join(self._chunks)

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
        elif self._chunks:  # pieces held are read together, up to READ_AT_MOST
            most, parts, held = min(size, READ_AT_MOST), [chunk], len(chunk)
            while self._chunks and held + len(self._chunks[0]) <= most:
                parts.append(self._chunks.popleft())
                held += len(parts[-1])
            chunk = b"".join(parts) if len(parts) > 1 else chunk
        self._ahead -= len(chunk)
        return chunk

    def close(self) -> None:
        if not self.closed:
            self._driver.release(self.curl)
        super().close()


class CurlPool:
    """Transfers to one site; ``configure`` sets what every request shares
    (credentials, TLS) on each new handle."""

    def __init__(self, configure: Callable[[pycurl.Curl], None], timeout: float) -> None:
        self._configure, self._timeout = configure, timeout
        self._local = threading.local()
        self._drivers: list[_Driver] = []
        self._lock = threading.Lock()

    def _driver(self) -> _Driver:
        driver: _Driver | None = getattr(self._local, "driver", None)
        if driver is None:
            driver = self._local.driver = _Driver()
            with self._lock:
                self._drivers.append(driver)
        return driver

    def open(self, method: str, url: str, headers: dict[str, str]) -> CurlResponse:
        """Start a request (or take the one :meth:`send_ahead` started) and return once
        its final headers are in, or it failed. The body comes as served: a
        Content-Encoding is the caller's to undo."""
        driver = self._driver()
        early = driver.early.pop(_key(method, url, headers), None)
        response = early or self._send(driver, method, url, headers)
        return response.wait_for_headers()

    def send_ahead(self, method: str, url: str, headers: dict[str, str]) -> None:
        """Start a request this thread will :meth:`open` soon: its answer arrives while
        the thread works on others, instead of being waited for then."""
        driver = self._driver()
        key = _key(method, url, headers)
        if key not in driver.early:
            if len(driver.early) >= MAX_AHEAD:  # never opened: the oldest goes
                driver.early.pop(next(iter(driver.early))).close()
            driver.early[key] = self._send(driver, method, url, headers)

    def take_whole(self, method: str, url: str, headers: dict[str, str]) -> bytes | None:
        """The body of a request :meth:`send_ahead` started, once it has come whole
        (:meth:`CurlResponse.whole`); None otherwise: one that answered anything else
        is left for :meth:`open`, whose caller has the words for it; one that failed
        or fell silent is dropped, and :meth:`open` asks again."""
        driver = self._driver()
        key = _key(method, url, headers)
        response = driver.early.get(key)
        if response is None:
            return None
        try:
            body = response.whole()
            if body is None:
                return None  # left for open()
        except (OSError, EOFError):
            body = None
        del driver.early[key]
        response.close()
        return body

    def _send(
        self, driver: _Driver, method: str, url: str, headers: dict[str, str]
    ) -> CurlResponse:
        curl = driver.idle.pop() if driver.idle else self._new_handle()
        try:
            curl.setopt(pycurl.URL, url)
            curl.setopt(pycurl.HTTPHEADER, [_header_line(k, v) for k, v in headers.items()])
            if method == "HEAD":
                curl.setopt(pycurl.NOBODY, 1)
            else:
                curl.setopt(pycurl.HTTPGET, 1)  # undoes an earlier HEAD's NOBODY
        except BaseException:
            driver.idle.append(curl)
            raise
        response = CurlResponse(driver, curl, self._timeout)
        driver.start(response)
        return response

    def _new_handle(self) -> pycurl.Curl:
        """A handle with what every request of this pool shares, set once: a handle
        is reused for the next request, which sets only its URL, headers and method."""
        curl = pycurl.Curl()
        options: dict[int, Any] = {
            pycurl.NOSIGNAL: 1,
            pycurl.FOLLOWLOCATION: 1,
            pycurl.MAXREDIRS: _REDIRECTS,
            pycurl.PROTOCOLS: _WEB,
            pycurl.REDIR_PROTOCOLS: _WEB,
            pycurl.CONNECTTIMEOUT_MS: max(1, int(self._timeout * 1000)),
            pycurl.TCP_KEEPALIVE: 1,
            pycurl.HTTP_CONTENT_DECODING: 0,
            pycurl.BUFFERSIZE: 256 << 10,  # fewer, larger chunks
        }
        try:
            for option, value in options.items():
                curl.setopt(option, value)
            self._configure(curl)
        except BaseException:
            curl.close()
            raise
        return curl

    def close(self) -> None:
        """Close every thread's handles; only once no transfer of this pool runs."""
        with self._lock:
            for driver in self._drivers:
                driver.close()
            self._drivers.clear()
        self._local = threading.local()
