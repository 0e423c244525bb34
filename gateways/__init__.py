"""The outside world: one file interface over local disk, HTTP, S3, FTP and SFTP.

Nothing here knows about conda, jobs or the CLI; callers pass URLs and paths and get
plain models back (``FileInfo``, byte streams).
"""

from __future__ import annotations

from .base import Fetched, FileInfo, Gateway, GatewayOptions, LockInfo
from .errors import (
    GatewayError,
    IntegrityError,
    LockHeld,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ReadOnlyError,
    TransientError,
    UsageError,
)
from .retry import RetryPolicy
from .streams import CHUNK, ResumingReader, VerifyingReader
from .urls import clean_relative, parse, redact


def open_gateway(url: str, options: GatewayOptions | None = None) -> Gateway:
    """The adapter for ``url``'s scheme, rooted at ``url``."""
    scheme = parse(url).scheme
    if scheme == "file":
        from .localfs import LocalGateway

        return LocalGateway(url, options)
    if scheme in ("http", "https"):
        from .http import HTTPGateway

        return HTTPGateway(url, options)
    if scheme == "s3":
        from .s3 import S3Gateway

        return S3Gateway(url, options)
    if scheme in ("ftp", "ftps"):
        from .ftp import FTPGateway

        return FTPGateway(url, options)
    from .sftp import SFTPGateway

    return SFTPGateway(url, options)


def split_url(url: str) -> tuple[str, str]:
    """Split a file URL into (directory URL, file name), for opening single files."""
    stripped = url.rstrip("/")
    if "/" not in stripped.split("://", 1)[-1]:
        return stripped, ""
    head, _, name = stripped.rpartition("/")
    if head.endswith(":/") or head.endswith("://"):
        return f"{head}/", name
    return head or "/", name


__all__ = [
    "CHUNK",
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
    "ReadOnlyError",
    "ResumingReader",
    "RetryPolicy",
    "TransientError",
    "UsageError",
    "VerifyingReader",
    "clean_relative",
    "open_gateway",
    "parse",
    "redact",
    "split_url",
]
