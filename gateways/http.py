"""HTTP(S): read-only, conditional, resumable; bytes are hashed exactly as served."""

from __future__ import annotations

import contextlib
import email.utils
import html.parser
import os
import time
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from .base import Fetched, FileInfo, Gateway, GatewayOptions
from .errors import (
    NotFound,
    PermissionDenied,
    ProtocolError,
    ReadOnlyError,
    TransientError,
    UsageError,
)
from .retry import call
from .streams import RawStream, ResumingReader
from .urls import join, parse

# Files whose bytes are already compressed: a Content-Encoding on them is never undone,
# since their hashes in repodata are of the bytes as stored.
COMPRESSED_SUFFIXES = (".zst", ".bz2", ".conda", ".gz", ".xz", ".zip", ".msgpack.zst")
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Body(RawStream):
    """The raw body of one response, with network failures made transient."""

    def __init__(self, response: requests.Response, decode: bool, url: str, skip: int) -> None:
        self._response = response
        self._decode = decode
        self._url = url
        self._skip = skip

    def read(self, size: int | None = -1) -> bytes:
        try:
            while self._skip:
                dropped = self._response.raw.read(min(self._skip, 1 << 20))
                if not dropped:
                    break
                self._skip -= len(dropped)
            amount = None if size is None or size < 0 else size
            return self._response.raw.read(amount, decode_content=self._decode) or b""
        except _NETWORK_ERRORS as exc:
            raise TransientError(self._url, f"connection broke: {type(exc).__name__}") from None

    def close(self) -> None:
        self._response.close()


class _Links(html.parser.HTMLParser):
    """Hrefs of an autoindex page (nginx, Apache, S3-style HTML listings)."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


class HTTPGateway(Gateway):
    scheme = "http"
    writable = False

    def __init__(self, url: str, options: GatewayOptions | None = None) -> None:
        super().__init__(url, options)
        loc = parse(url)
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        # Credentials travel in the session, never in the URL that errors may show.
        self._base = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        self.session = requests.Session()
        # The environment (proxies, NO_PROXY, ~/.netrc, REQUESTS_CA_BUNDLE) is read once
        # for this host, not on every request: per-request it costs more than the GET.
        self.session.trust_env = False
        self.session.proxies = requests.utils.get_environ_proxies(self._base)
        if loc.username:
            self.session.auth = (loc.username, loc.password or "")
        else:
            self.session.auth = requests.utils.get_netrc_auth(self._base)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        env_ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self.session.verify = self.options.ca_bundle or (
            (env_ca or True) if self.options.verify_tls else False
        )
        self.session.headers["User-Agent"] = "conda-ferry"

    def _url(self, path: str) -> str:
        return join(self._base, path)

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        try:
            yield
        except requests.exceptions.SSLError:
            raise ProtocolError(
                self.display(path),
                "TLS verification failed",
                "give the CA bundle with --ca-bundle, or fix the server's certificate",
            ) from None
        except requests.exceptions.InvalidURL:
            raise UsageError(self.display(path), "malformed URL") from None
        except _NETWORK_ERRORS as exc:
            raise TransientError(
                self.display(path),
                f"cannot reach the server ({type(exc).__name__})",
                "check the host name, port and network",
            ) from None

    def _request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        stream: bool = False,
        retry: bool = True,
    ) -> requests.Response:
        def attempt() -> requests.Response:
            with self._errors(path):
                response = self.session.request(
                    method,
                    self._url(path),
                    headers=headers,
                    stream=stream,
                    timeout=self.options.timeout,
                    allow_redirects=True,
                )
            self._check(response, path)
            return response

        return call(attempt, self.options.retry, self.display(path)) if retry else attempt()

    def _check(self, response: requests.Response, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        response.close()
        where = self.display(path)
        if status in _TRANSIENT_STATUS:
            raise TransientError(
                where,
                f"HTTP {status}",
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        if status in (404, 410):
            raise NotFound(where, f"HTTP {status}")
        if status in (401, 403):
            raise PermissionDenied(where, f"HTTP {status}")
        if status == 416:
            raise ProtocolError(where, "HTTP 416: range not satisfiable")
        raise ProtocolError(where, f"HTTP {status}")

    def _info_from(self, path: str, response: requests.Response) -> FileInfo:
        headers = response.headers
        size = int(headers.get("Content-Length", -1))
        if response.status_code == 206 and "Content-Range" in headers:
            size = int(headers["Content-Range"].rpartition("/")[2] or -1)
        if headers.get("Content-Encoding") and not path.endswith(COMPRESSED_SUFFIXES):
            size = -1  # the encoded length says nothing about the file's
        mtime = None
        if lm := headers.get("Last-Modified"):
            with contextlib.suppress(TypeError, ValueError):
                mtime = email.utils.parsedate_to_datetime(lm).timestamp()
        return FileInfo(self._rel(path), size, mtime, headers.get("ETag"))

    def info(self, path: str) -> FileInfo:
        response = self._request("HEAD", path, {"Accept-Encoding": "identity"})
        return self._info_from(path, response)

    def list(self, path: str = "", recursive: bool = False) -> list[FileInfo]:
        rel = self._rel(path)
        response = self._request("GET", f"{rel}/" if rel else "", {})
        if "html" not in response.headers.get("Content-Type", ""):
            raise ProtocolError(self.display(path), "the server gives no directory listing")
        parser = _Links()
        parser.feed(response.text)
        out: list[FileInfo] = []
        for href in parser.hrefs:
            name = unquote(href.split("?", 1)[0])
            if "://" in name or name.startswith(("/", "..", "#")) or name in ("", "./"):
                continue
            child = f"{rel}/{name.rstrip('/')}" if rel else name.rstrip("/")
            if name.endswith("/"):
                if recursive:
                    out.extend(self.list(child, recursive=True))
                else:
                    out.append(FileInfo(child, 0, is_dir=True))
            else:
                out.append(FileInfo(child, -1))
        return sorted(out, key=lambda f: f.path)

    def _open(self, path: str, offset: int, if_range: str | None) -> BinaryIO:
        compressed = path.endswith(COMPRESSED_SUFFIXES)
        headers = {"Accept-Encoding": "identity" if compressed or offset else "gzip"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if if_range:
                headers["If-Range"] = if_range
        response = self._request("GET", path, headers, stream=True, retry=False)
        skip = 0
        if offset and response.status_code == 200:
            if if_range and response.headers.get("ETag") not in (None, if_range):
                response.close()
                raise ProtocolError(self.display(path), "the file changed during the download")
            skip = offset  # the server ignores ranges: read past what we already have
        encoded = bool(response.headers.get("Content-Encoding"))
        return _Body(response, encoded and not compressed, self.display(path), skip).as_binary()

    def open_read(self, path: str, offset: int = 0) -> BinaryIO:
        self._rel(path)
        return self._resuming(path, offset, None, None)

    def _resuming(self, path: str, offset: int, first: _Body | None, etag: str | None) -> BinaryIO:
        """A body that resumes, with If-Range, into the same version of the file only."""
        validator: list[str | None] = [etag]

        def opener(at: int) -> BinaryIO:
            body = self._open(path, at, validator[0])
            if validator[0] is None:
                validator[0] = body._response.headers.get("ETag")  # type: ignore[attr-defined]
            return body

        return ResumingReader(
            opener,
            self.options.retry,
            self.display(path),
            offset,
            first.as_binary() if first else None,
        ).as_binary()

    def fetch_if_changed(
        self, path: str, etag: str | None = None, last_modified: str | None = None
    ) -> Fetched | None:
        compressed = path.endswith(COMPRESSED_SUFFIXES)
        headers = {"Accept-Encoding": "identity" if compressed else "gzip"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        response = self._request("GET", path, headers, stream=True)
        if response.status_code == 304:
            response.close()
            return None
        info = self._info_from(path, response)
        encoded = bool(response.headers.get("Content-Encoding"))
        body = _Body(response, encoded and not compressed, self.display(path), 0)
        stream = self._resuming(path, 0, body, response.headers.get("ETag"))
        return Fetched(info, stream, response.headers.get("Last-Modified"))

    def _read_only(self, path: str) -> ReadOnlyError:
        return ReadOnlyError(self.display(path), "HTTP is read-only")

    def write_atomic(
        self, path: str, stream: BinaryIO, size: int | None = None, durable: bool = True
    ) -> FileInfo:
        raise self._read_only(path)

    def delete(self, path: str) -> None:
        raise self._read_only(path)

    def rename(self, src: str, dst: str) -> None:
        raise self._read_only(src)

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        raise self._read_only(path)

    def close(self) -> None:
        self.session.close()
