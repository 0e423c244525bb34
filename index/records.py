"""Repodata records: made from package metadata, and names checked before any use."""

from __future__ import annotations

import re
from typing import Any

from .package import PackageMeta

EXTENSIONS = (".conda", ".tar.bz2")
# index.json keys that real indexers leave out of repodata (CEP 36 deprecates them).
_DROPPED = {"arch", "platform"}
_NAME = re.compile(r"^[A-Za-z0-9_.+!-][A-Za-z0-9_.+!~=-]*$")


class BadFilename(ValueError):
    pass


def check_filename(filename: str) -> str:
    """``filename`` if it is a plain package file name, else :class:`BadFilename`.

    Repodata comes from servers we do not control; a key such as ``../x.conda`` or
    ``/etc/x.conda`` must never become a path on the mirror.
    """
    if (
        not isinstance(filename, str)
        or not filename.endswith(EXTENSIONS)
        or "/" in filename
        or "\\" in filename
        or filename.startswith(".")
        or not _NAME.match(filename)
    ):
        raise BadFilename(f"unsafe package file name {filename!r}")
    return filename


def package_key(filename: str) -> str:
    """Which repodata section a file belongs to."""
    return "packages.conda" if filename.endswith(".conda") else "packages"


def stem(filename: str) -> str:
    for ext in EXTENSIONS:
        if filename.endswith(ext):
            return filename[: -len(ext)]
    return filename


def record_from_package(meta: PackageMeta) -> dict[str, Any]:
    """The repodata record for a package file, as conda-index and rattler write it."""
    record = {k: v for k, v in meta.index.items() if v is not None and k not in _DROPPED}
    record.update(md5=meta.md5, sha256=meta.sha256, size=meta.size)
    return dict(sorted(record.items()))
