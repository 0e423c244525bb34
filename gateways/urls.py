"""Parse gateway URLs and remove secrets from anything that will be shown."""

from __future__ import annotations

import functools
import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import msgspec

from .errors import UsageError
from .registry import SCHEMES

# Query parameters that authorise a request (pre-signed S3 URLs, tokens).
_SECRET_QUERY = re.compile(
    r"(?i)^(x-amz-[a-z-]*|signature|sig|token|access_token|auth|key|password|awsaccesskeyid)$"
)
# anaconda.org style path tokens: /t/<token>/channel
_PATH_TOKEN = re.compile(r"/t/[^/]+/")


class Location(msgspec.Struct, frozen=True, gc=False):
    """A URL split into the parts adapters need; ``path`` is always unquoted."""

    scheme: str
    host: str
    port: int | None
    username: str | None
    password: str | None
    path: str
    query: str = ""


def parse(url: str) -> Location:
    """Split ``url``; a bare path is a ``file`` location."""
    if not url:
        raise UsageError("''", "empty URL")
    if "\x00" in url:  # no file system or server takes one; os calls raise ValueError
        raise UsageError(repr(redact(url)), "holds a NUL character", "give the path or URL again")
    if "://" not in url:
        return Location("file", "", None, None, None, url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 host, a bad character
        raise UsageError(redact(url), f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(
            redact(url),
            f"unknown scheme '{scheme}://'",
            "use a local path, file://, http(s)://, s3://, ftp://, ftps:// or sftp://",
        )
    if scheme != "file" and "@" not in parts.netloc and _mask_userinfo(url) != url:
        after = url.partition("://")[2]
        maybe_port = after[after.find(":") + 1 :].split("/", 1)[0]
        if not (maybe_port.isascii() and maybe_port.isdigit()):
            raise UsageError(
                redact(url),
                "the password holds a character that ends the host part",
                "percent-encode it: # as %23, ? as %3F, / as %2F, @ as %40",
            )
    try:
        port = parts.port
    except ValueError:
        raise UsageError(redact(url), "the port is not a number") from None
    if scheme == "file":
        return Location("file", "", None, None, None, unquote(parts.path))
    if not parts.hostname:
        what = "bucket" if scheme == "s3" else "host"
        raise UsageError(redact(url), f"no {what} in the URL", f"write {scheme}://{what}/path")
    return Location(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        path=unquote(parts.path),
        query=parts.query,
    )


def _mask_userinfo(url: str) -> str:
    """Mask a password even where it breaks URL syntax (an unquoted ``#``, ``?``,
    ``/`` or ``@`` in it): everything from the first ``:`` after the user name to the
    last ``@`` is masked. A port followed by an ``@`` in the path is masked too:
    showing too little beats leaking."""
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")
    colon = rest.find(":")
    slash = rest.find("/")
    if at < 0 or colon < 0 or colon > at or (0 <= slash < colon):
        return url
    return f"{scheme}://{rest[:colon]}:***@{rest[at + 1 :]}"


def redact(url: str) -> str:
    """``url`` with passwords, path tokens and signing query parameters masked (and
    no fragment), whatever the URL's shape, well-formed or not."""
    if "://" not in url:
        return url
    url = _PATH_TOKEN.sub("/t/***/", _mask_userinfo(url))
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [: shown up to any query or fragment
        return re.split(r"[?#]", url, maxsplit=1)[0]
    netloc = parts.netloc
    if "@" in netloc and ":" in netloc.rpartition("@")[0]:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = "&".join(
        f"{k}=***" if _SECRET_QUERY.match(k) else (f"{k}={v}" if sep else k)
        for k, sep, v in (p.partition("=") for p in parts.query.split("&") if p)
    )
    # A fragment never reaches a server; shown, it may be the tail of a secret.
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def redact_text(text: str) -> str:
    """Every URL inside free text (an error, a log line, a traceback) redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text) if "://" in text else text


@functools.lru_cache(maxsize=4096)  # a copy names each path several times; bounded
def clean_relative(path: str, url: str = "") -> str:
    """Normalise a path below a gateway root, refusing escapes such as ``../x``.

    Everything a gateway writes is named relative to its root; a name that climbs out
    of it (from hostile repodata, a manifest, a user) must never reach the protocol.
    """
    if "\\" in path or "\x00" in path:
        raise UsageError(redact(url) if url else path, f"unsafe path {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(
            redact(url) if url else path, f"path {path!r} leaves the target", "use a path below it"
        )
    return "/".join(parts)


@functools.lru_cache(maxsize=4096)
def join(base: str, path: str) -> str:
    """Join a root URL and a relative path, quoting the path for the URL (as UTF-8;
    bytes a command line did not decode, as they were given)."""
    rel = clean_relative(path, base)
    if not rel:
        return base
    return f"{base.rstrip('/')}/{quote(rel, errors='surrogateescape')}"
