"""The outside world: one file interface over local disk, HTTP, S3, FTP and SFTP.

Nothing here knows about conda, jobs or the CLI; callers pass URLs and paths and get
plain models back (``FileInfo``, byte streams).
"""

from __future__ import annotations

import importlib

from .base import (
    Fetched,
    FileInfo,
    Gateway,
    GatewayOptions,
    LockInfo,
    is_temp,
    option,
    temp_name,
)
from .copy import Copied, Expected, copy_file, copy_prefetched, copy_stream, matches
from .errors import (
    CredentialsError,
    GatewayError,
    IntegrityError,
    LockHeld,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ReadOnlyError,
    TransientError,
    UsageError,
    WriteRefused,
)
from .registry import ADAPTERS
from .retry import RetryPolicy
from .streams import CHUNK, MAX_EXPANSION, RawStream, VerifyingReader, expansion_limit
from .urls import clean_relative, parse, redact, redact_text


def adapter(url: str) -> type[Gateway]:
    """The adapter class for ``url``'s scheme: imported, nothing opened (a process
    about to fork workers imports it once for all of them)."""
    module, name = ADAPTERS[parse(url).scheme]
    found: type[Gateway] = getattr(importlib.import_module(f".{module}", __name__), name)
    return found


def open_gateway(url: str, options: GatewayOptions | None = None) -> Gateway:
    """The adapter for ``url``'s scheme, rooted at ``url``."""
    return adapter(url)(url, options)


def split_url(url: str) -> tuple[str, str]:
    """Split a file URL into (directory URL, file name), for opening single files."""
    stripped = url.rstrip("/")
    if "://" not in url and "/" not in url:  # a bare name: a file here
        return ".", url
    if "/" not in stripped.split("://", 1)[-1]:
        return stripped, ""
    head, _, name = stripped.rpartition("/")
    if head.endswith(":/") or head.endswith("://"):
        return f"{head}/", name
    return head or "/", name


def open_file(url: str, options: GatewayOptions | None = None) -> tuple[Gateway, str]:
    """The gateway of a file URL's directory, and the file's name in it."""
    directory, name = split_url(url)
    if not name:
        raise UsageError(redact(url), "names no file", "give the URL of a file")
    return open_gateway(directory, options), name


def list_url(
    url: str, recursive: bool = False, options: GatewayOptions | None = None
) -> list[FileInfo]:
    """The entries of a directory URL, or the one entry of a file URL."""
    with open_gateway(url, options) as gateway:
        try:
            return gateway.list("", recursive=recursive)
        except NotFound:
            parent_url, name = split_url(url)
            if not name:
                raise
    with open_gateway(parent_url, options) as parent:
        return [parent.info(name)]


def copy_url(
    src: str, dst: str, sha256: str | None = None, options: GatewayOptions | None = None
) -> Copied:
    """Copy one file between any two URLs (``dst`` ending in / is a directory),
    verified against its size and ``sha256`` as it streams."""
    source, name = open_file(src, options)
    if dst.endswith("/"):
        target, target_name = open_gateway(dst, options), name
    else:
        target, target_name = open_file(dst, options)
    with source, target:
        size = source.info(name).size
        return copy_file(
            source, name, target, target_name, Expected(size if size >= 0 else None, sha256)
        )


__all__ = [
    "CHUNK",
    "MAX_EXPANSION",
    "Copied",
    "CredentialsError",
    "Expected",
    "Fetched",
    "FileInfo",
    "Gateway",
    "GatewayError",
    "GatewayOptions",
    "IntegrityError",
    "LockHeld",
    "LockInfo",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "RawStream",
    "ReadOnlyError",
    "RetryPolicy",
    "TransientError",
    "UsageError",
    "VerifyingReader",
    "WriteRefused",
    "adapter",
    "clean_relative",
    "copy_file",
    "copy_prefetched",
    "copy_stream",
    "copy_url",
    "expansion_limit",
    "is_temp",
    "list_url",
    "matches",
    "open_file",
    "open_gateway",
    "option",
    "parse",
    "redact",
    "redact_text",
    "split_url",
    "temp_name",
]
