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
    CredentialsError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ReadOnlyError,
    TransientError,
    UsageError,
    network_problem,
)
from .streams import CHUNK, MAX_EXPANSION, GuardedStream, expansion_limit
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


def _count(value: str | None) -> int:
    """A byte count from a header; -1 (unknown) for anything that is not one."""
    text = (value or "").strip()
    return int(text) if text.isdigit() and len(text) < 20 else -1


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
                "name the CA bundle in {option}, or fix the server's certificate",
                option="ca_bundle",
            ) from None
        except requests.exceptions.InvalidURL:
            raise UsageError(self.display(path), "malformed URL") from None
        except _NETWORK_ERRORS as exc:
            raise TransientError(
                self.display(path),
                f"cannot reach the server: {network_problem(exc)}",
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

        return self._retry(path, attempt) if retry else attempt()

    def _check(self, response: requests.Response, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        response.close()
        where, code = self.display(path), str(status)
        if status in _TRANSIENT_STATUS:
            raise TransientError(
                where,
                f"HTTP {status}",
                code=code,
                retry_after=_retry_after(response.headers.get("Retry-After")),
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

    def _info_from(self, path: str, response: requests.Response) -> FileInfo:
        headers = response.headers
        size = _count(headers.get("Content-Length"))
        if response.status_code == 206 and "Content-Range" in headers:
            size = _count(headers["Content-Range"].rpartition("/")[2])
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

    def _listdir(self, path: str) -> list[FileInfo]:
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
            is_dir = name.endswith("/")
            out.append(FileInfo(child, 0 if is_dir else -1, is_dir=is_dir))
        return out

    def _body(self, response: requests.Response, path: str, decode: bool) -> BinaryIO:
        raw, where = response.raw, self.display(path)
        decoded = 0

        def read(size: int) -> bytes:
            nonlocal decoded
            # read1: whatever has arrived, so that a trickling server is seen between
            # reads instead of inside one that waits for a whole chunk
            data: bytes = raw.read1(size, decode_content=decode)
            decoded += len(data)
            if decode and decoded > expansion_limit(raw.tell()):
                raise ProtocolError(
                    where,
                    f"the Content-Encoding expands more than {MAX_EXPANSION}-fold "
                    "(a decompression bomb?)",
                    "refused; nothing was written",
                )
            return data

        return GuardedStream(read, response.close, where, _NETWORK_ERRORS).as_binary()

    def _open(self, path: str, offset: int, version: str | None) -> tuple[BinaryIO, str | None]:
        compressed = path.endswith(COMPRESSED_SUFFIXES)
        headers = {"Accept-Encoding": "identity" if compressed or offset else "gzip"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if version:
                headers["If-Range"] = version
        response = self._request("GET", path, headers, stream=True, retry=False)
        served = response.headers.get("ETag")
        skip = 0
        if offset and response.status_code == 200:
            if version and served not in (None, version):
                response.close()
                raise ProtocolError(self.display(path), "the file changed during the download")
            skip = offset  # the server ignores ranges: read past what we already have
        encoded = bool(response.headers.get("Content-Encoding"))
        body = self._body(response, path, encoded and not compressed)
        while skip > 0:
            dropped = body.read(min(skip, CHUNK))
            if not dropped:
                break
            skip -= len(dropped)
        return body, served

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
        first = self._body(response, path, encoded and not compressed)
        stream = self._resuming(path, 0, first, response.headers.get("ETag"))
        return Fetched(info, stream, response.headers.get("Last-Modified"))

    def _read_only(self, path: str) -> ReadOnlyError:
        return ReadOnlyError(self.display(path), "HTTP is read-only")

    def write_atomic(self, path: str, stream: BinaryIO, durable: bool = True) -> FileInfo:
        raise self._read_only(path)

    def delete(self, path: str) -> None:
        raise self._read_only(path)

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        raise self._read_only(path)

    def close(self) -> None:
        self.session.close()
