"""Which adapter serves which URL scheme: one table, imported lazily.

Adapters pull in heavy clients (boto3, paramiko); a command that only touches the
local disk should not pay for them, so the table names modules, not classes.
"""

from __future__ import annotations

ADAPTERS: dict[str, tuple[str, str]] = {
    "file": ("localfs", "LocalGateway"),
    "http": ("http", "HTTPGateway"),
    "https": ("http", "HTTPGateway"),
    "s3": ("s3", "S3Gateway"),
    "ftp": ("ftp", "FTPGateway"),
    "ftps": ("ftp", "FTPGateway"),
    "sftp": ("sftp", "SFTPGateway"),
}
SCHEMES = tuple(ADAPTERS)
