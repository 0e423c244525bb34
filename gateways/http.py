"""HTTP(S): read-only, conditional, resumable; bytes are hashed exactly as served."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pycurl

from .base import Fetched, FileInfo, Gateway, GatewayOptions, listable
from .curl import BAD_URL, TLS_FAILURES, CurlError, CurlPool, CurlResponse
from .errors import (
    CredentialsError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ReadOnlyError,
    TransientError,
    UsageError,
    network_problem,
)
from .httpdate import http_date
from .inflate import Inflating
from .streams import CHUNK, GuardedStream
from .urls import join, parse, redact

# Files whose bytes are already compressed: a Content-Encoding on them is never undone,
# since their hashes in repodata are of the bytes as stored.
COMPRESSED_SUFFIXES = (".zst", ".bz2", ".conda", ".gz", ".xz", ".zip", ".msgpack.zst")
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_NETWORK_ERRORS = (OSError, EOFError)  # CurlError and the built-ins it maps to
# what a URL's path keeps as it is (as requests and browsers do): the rest, a space or
# a character beyond ASCII, is percent-encoded, as UTF-8, for libcurl, which takes
# only ASCII (and refuses a space as a malformed URL)
_PATH_SAFE = "!$%&'()*+,/:;=@[]~"


@functools.cache
def certifi_bundle() -> str:
    """certifi's CA bundle, found where certifi keeps it without importing certifi,
    whose import (importlib.resources, tempfile, shutil, lzma) cost 5-8 ms of every
    start; certifi's own answer where the file is not there (a zipped install)."""
    spec = importlib.util.find_spec("certifi")
    if spec is not None and spec.origin:
        bundle = os.path.join(os.path.dirname(spec.origin), "cacert.pem")
        if os.path.isfile(bundle):
            return bundle
    import certifi

    return certifi.where()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isascii() and value.strip().isdigit():
        return float(value)
    when = http_date(value)
    return None if when is None else max(0.0, when - time.time())


def _count(value: str | None) -> int:
    """A byte count from a header; -1 (unknown) for anything that is not one."""
    text = (value or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else -1


def environment_proxy(scheme: str, host: str) -> str:
    """The proxy the environment names for ``host``, "" for none; read once per
    gateway, as requests and conda read it: ``https_proxy`` or ``HTTPS_PROXY`` (libcurl
    alone reads only the lower-case ``http_proxy``), then ``all_proxy``; ``no_proxy``
    lists hosts and domains reached directly (``*`` for all)."""

    def env(name: str) -> str:
        return os.environ.get(name) or os.environ.get(name.upper()) or ""

    for entry in (e.strip() for e in env("no_proxy").split(",")):
        domain = entry.split(":")[0].lstrip("*.")  # "host:port", ".domain", "*.domain"
        if entry == "*" or (domain and (host == domain or host.endswith(f".{domain}"))):
            return ""
    return env(f"{scheme}_proxy") or env("all_proxy")


def _ascii_host(host: str, url: str) -> str:
    """``host`` as DNS and libcurl take it: a name beyond ASCII in its IDNA form."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise UsageError(
            redact(url), f"'{host}' is not a valid host name", "check the URL's host"
        ) from None


def _accept(path: str, wanted: str) -> str:
    """The Accept-Encoding for ``path``: identity for files whose bytes are already
    compressed, whose hashes in repodata are of the bytes as stored (an encoding a
    server adds anyway is then left as it is)."""
    return "identity" if path.endswith(COMPRESSED_SUFFIXES) else wanted


def _hrefs(page: str) -> list[str]:
    """Hrefs of an autoindex page (nginx, Apache, S3-style HTML listings)."""
    import html.parser  # listings only: not loaded on every start

    hrefs: list[str] = []

    class Links(html.parser.HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            href = dict(attrs).get("href") if tag == "a" else None
            if href:
                hrefs.append(href)

    Links().feed(page)
    return hrefs


class HTTPGateway(Gateway):
    scheme = "http"
    writable = False
    streams_progress_together = True  # one libcurl multi handle per thread, see prefetch

    def __init__(self, url: str, options: GatewayOptions | None = None) -> None:
        super().__init__(url, options)
        loc = parse(url)
        parts = urlsplit(url)
        netloc = _ascii_host(parts.hostname or "", url)
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        # Credentials travel in the handle's options, never in the URL errors may show.
        # bytes a command line did not decode (surrogates) are sent as they were given
        path = quote(parts.path, _PATH_SAFE, errors="surrogateescape")
        query = quote(parts.query, _PATH_SAFE + "?", errors="surrogateescape")
        self._base = urlunsplit((parts.scheme, netloc, path, query, ""))
        self._credentials = (loc.username, loc.password or "") if loc.username else None
        env_ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._ca = self.options.ca_bundle or env_ca
        self._proxy = environment_proxy(parts.scheme, parts.hostname or "")
        netrc = os.path.expanduser(os.environ.get("NETRC") or "~/.netrc")
        self._netrc = netrc if not self._credentials and os.path.isfile(netrc) else None
        self._pool = CurlPool(self._configure, self.options.timeout)

    def _configure(self, curl: pycurl.Curl) -> None:
        """What every request to this site shares. Text goes to libcurl as bytes
        (pycurl would encode it as ASCII and fail on anything else): file names as
        the file system spells them, a user name and password as UTF-8."""
        curl.setopt(pycurl.USERAGENT, "conda-ferry")
        # "" is none, whatever the environment
        curl.setopt(pycurl.PROXY, os.fsencode(self._proxy))
        if self._credentials:
            user, password = self._credentials
            curl.setopt(pycurl.USERNAME, user.encode(errors="surrogateescape"))
            curl.setopt(pycurl.PASSWORD, password.encode(errors="surrogateescape"))
        elif self._netrc:
            curl.setopt(pycurl.NETRC, pycurl.NETRC_OPTIONAL)
            curl.setopt(pycurl.NETRC_FILE, os.fsencode(self._netrc))
        if not self.options.verify_tls:
            curl.setopt(pycurl.SSL_VERIFYPEER, 0)
            curl.setopt(pycurl.SSL_VERIFYHOST, 0)
        else:
            curl.setopt(pycurl.CAINFO, os.fsencode(self._ca or certifi_bundle()))

    def _url(self, path: str) -> str:
        return join(self._base, path)

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        try:
            yield
        except CurlError as exc:
            if exc.errno in TLS_FAILURES:
                raise ProtocolError(
                    self.display(path),
                    "TLS verification failed",
                    "name the CA bundle in {option}, or fix the server's certificate",
                    option="ca_bundle",
                ) from None
            if exc.errno in BAD_URL:
                raise UsageError(self.display(path), "malformed URL") from None
            raise self._unreachable(path, exc) from None
        except _NETWORK_ERRORS as exc:
            raise self._unreachable(path, exc) from None

    def _unreachable(self, path: str, exc: BaseException) -> TransientError:
        return TransientError(
            self.display(path),
            f"cannot reach the server: {network_problem(exc)}",
            "check the host name, port and network",
        )

    def _request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        retry: bool = True,
    ) -> CurlResponse:
        def attempt() -> CurlResponse:
            with self._errors(path):
                response = self._pool.open(method, self._url(path), headers)
            self._check(response, path)
            return response

        return self._retry(path, attempt) if retry else attempt()

    def _check(self, response: CurlResponse, path: str) -> None:
        status = response.status
        if status < 400:
            return
        response.close()
        where, code = self.display(path), str(status)
        if status in _TRANSIENT_STATUS:
            raise TransientError(
                where,
                f"HTTP {status}",
                code=code,
                retry_after=_retry_after(response.headers.get("retry-after")),
            )
        if status in (404, 410):
            raise NotFound(where, f"HTTP {status}", code=code)
        if status == 401:
            raise CredentialsError(where, "HTTP 401: credentials missing or refused", code=code)
        if status == 403:
            raise PermissionDenied(where, f"HTTP {status}", code=code)
        if status == 416:
            raise ProtocolError(where, "HTTP 416: range not satisfiable", code=code)
        raise ProtocolError(where, f"HTTP {status}", code=code)

    def _info_from(self, path: str, response: CurlResponse) -> FileInfo:
        headers = response.headers
        size = _count(headers.get("content-length"))
        if response.status == 206 and "content-range" in headers:
            size = _count(headers["content-range"].rpartition("/")[2])
        if headers.get("content-encoding") and not path.endswith(COMPRESSED_SUFFIXES):
            size = -1  # the encoded length says nothing about the file's
        mtime = http_date(headers.get("last-modified"))
        return FileInfo(self._rel(path), size, mtime, headers.get("etag"))

    def info(self, path: str) -> FileInfo:
        with self._request("HEAD", path, {"Accept-Encoding": "identity"}) as response:
            return self._info_from(path, response)

    def _listdir(self, path: str) -> list[FileInfo]:
        rel = self._rel(path)
        with self._request(
            "GET", f"{rel}/" if rel else "", {"Accept-Encoding": "gzip"}
        ) as response:
            if "html" not in response.headers.get("content-type", ""):
                raise ProtocolError(self.display(path), "the server gives no directory listing")
            with self._body(response, path) as body:
                page = body.read()
        out: list[FileInfo] = []
        for href in _hrefs(page.decode("utf-8", "replace")):
            name = unquote(href.split("?", 1)[0])
            bare = name.removesuffix("/")
            if name.startswith("#") or not listable(bare, 0):  # another page's, or a path
                continue
            child = f"{rel}/{bare}" if rel else bare
            is_dir = name.endswith("/")
            out.append(FileInfo(child, 0 if is_dir else -1, is_dir=is_dir))
        return out

    def _body(self, response: CurlResponse, path: str) -> BinaryIO:
        where = self.display(path)
        body = GuardedStream(response.read, response.close, where, _NETWORK_ERRORS)
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding == "identity" or path.endswith(COMPRESSED_SUFFIXES):
            return body.as_binary()  # stored bytes, hashed as they are
        if encoding not in ("gzip", "x-gzip", "deflate"):
            body.close()
            raise ProtocolError(where, f"unrequested Content-Encoding {encoding!r}")
        return Inflating(body.read, body.close, where).as_binary()

    def _get(self, path: str, offset: int = 0, version: str | None = None) -> dict[str, str]:
        """The headers of a GET of ``path`` from ``offset``."""
        # a range counts stored bytes: nothing may be encoded on the way
        headers = {"Accept-Encoding": _accept(path, "identity" if offset else "gzip")}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if version:
                headers["If-Range"] = version
        return headers

    def prefetch(self, paths: Iterable[str]) -> None:
        for path in paths:
            with self._errors(path):
                self._pool.send_ahead("GET", self._url(path), self._get(path))

    def read_prefetched(self, path: str) -> bytes | None:
        if not path.endswith(COMPRESSED_SUFFIXES):  # an encoding might be to undo
            return None
        with self._errors(path):
            body = self._pool.take_whole("GET", self._url(path), self._get(path))
        if body is not None and self._cap is not None:
            self._cap.take(len(body))  # max_rate counts these bytes as a reader would
        return body

    def _open(self, path: str, offset: int, version: str | None) -> tuple[BinaryIO, str | None]:
        response = self._request("GET", path, self._get(path, offset, version), retry=False)
        served = response.headers.get("etag")
        skip = 0
        if offset and response.status == 200:
            if version and served not in (None, version):
                response.close()
                raise ProtocolError(self.display(path), "the file changed during the download")
            skip = offset  # the server ignores ranges: read past what we already have
        body = self._body(response, path)
        while skip > 0:
            dropped = body.read(min(skip, CHUNK))
            if not dropped:
                break
            skip -= len(dropped)
        return body, served

    def fetch_if_changed(
        self, path: str, etag: str | None = None, last_modified: str | None = None
    ) -> Fetched | None:
        headers = self._get(path)
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        response = self._request("GET", path, headers)
        if response.status == 304:
            response.close()
            return None
        info = self._info_from(path, response)
        first = self._body(response, path)
        served = response.headers.get("etag")
        return Fetched(
            info, self._resuming(path, 0, first, served), response.headers.get("last-modified")
        )

    def _read_only(self, path: str) -> ReadOnlyError:
        return ReadOnlyError(self.display(path), "HTTP is read-only")

    def write_atomic(self, path: str, stream: BinaryIO, durable: bool = True) -> FileInfo:
        raise self._read_only(path)

    def delete(self, path: str) -> None:
        raise self._read_only(path)

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        raise self._read_only(path)

    def close(self) -> None:
        self._pool.close()
