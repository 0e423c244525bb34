"""Repodata records: made from package metadata, and names checked before any use."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from .package import BadPackage, PackageMeta
from .rattlertypes import Version

EXTENSIONS = (".conda", ".tar.bz2")
SECTIONS = ("packages", "packages.conda")  # repodata's record sections, one per format
# index.json keys that real indexers leave out of repodata (CEP 36 deprecates them).
_DROPPED = {"arch", "platform"}
# no separators, no leading dot: a name, never a path
_FILENAME = re.compile(r"[A-Za-z0-9_+!-][A-Za-z0-9_.+!~=-]*\.(?:conda|tar\.bz2)")


_SUBDIR = re.compile(r"[a-z0-9]+(-[a-z0-9_]+)?")


def is_subdir_name(name: object) -> bool:
    """Whether ``name`` can be a subdir (``noarch``, ``linux-64``, ...): never a path,
    whoever wrote it (a job, a bundle manifest, a package's own index.json)."""
    return isinstance(name, str) and bool(_SUBDIR.fullmatch(name))


class Entry(msgspec.Struct, frozen=True):
    """A package's record and what else its package says (about, run_exports, flags)."""

    record: Mapping[str, Any]  # a dict, or a record read compactly (index.compact)
    extras: dict[str, Any]


class BadFilename(ValueError):
    pass


def check_filename(filename: str) -> str:
    """``filename`` if it is a plain package file name, else :class:`BadFilename`.

    Repodata comes from servers we do not control; a key such as ``../x.conda`` or
    ``/etc/x.conda`` must never become a path on the mirror.
    """
    if not isinstance(filename, str) or not _FILENAME.fullmatch(filename):
        raise BadFilename(f"unsafe package file name {filename!r}")
    return filename


_HEX = {"sha256": re.compile(r"^[0-9a-fA-F]{64}$"), "md5": re.compile(r"^[0-9a-fA-F]{32}$")}
_STRINGS = ("name", "version", "build")
_OPTIONAL_STRINGS = ("subdir", "license", "license_family", "track_features", "noarch")
_STRING_LISTS = ("depends", "constrains")


@functools.lru_cache(maxsize=1 << 16)
def _version_parses(text: str) -> bool:
    """Cached: a subdir's records share far fewer versions than they number."""
    try:
        Version(text)
    except Exception:  # rattler raises its own exception types
        return False
    return True


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def record_problem(record: Any, need_digest: bool = True) -> str | None:
    """Why a repodata record cannot be trusted or served, in a few words; None if it can.

    Records come from servers and packages we do not control; one of the wrong shape
    must be refused by name before any filter, solver or writer meets it.
    """
    if not isinstance(record, dict):
        return "the record is not a JSON object"
    for key in _STRINGS:
        if not isinstance(record.get(key), str) or not record[key]:
            return f"'{key}' is missing or not a string"
    problem = version_problem(record["version"])
    if problem:
        return problem
    for key in _OPTIONAL_STRINGS:
        value = record.get(key)
        if value is not None and not isinstance(value, (str, bool) if key == "noarch" else str):
            return f"'{key}' is not a string"
    for key in _STRING_LISTS:
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"'{key}' is not a list of strings"
    if "build_number" in record and not _integer(record["build_number"]):
        return "'build_number' is not an integer"
    timestamp = record.get("timestamp")
    if timestamp is not None and (
        isinstance(timestamp, bool)
        or not isinstance(timestamp, (int, float))
        or not 0 <= timestamp < 1e14
    ):
        return "'timestamp' is not a time in seconds or milliseconds"
    if not _integer(record.get("size")) or record["size"] < 0:
        return "'size' is missing or not a byte count"
    for key, shape in _HEX.items():
        if record.get(key) is not None and not (
            isinstance(record[key], str) and shape.match(record[key])
        ):
            return f"'{key}' is not a {key} digest"
    return digest_problem(record.get("sha256"), record.get("md5")) if need_digest else None


def version_problem(version: str) -> str | None:
    return None if _version_parses(version) else f"version {version[:40]!r} does not parse"


def digest_problem(sha256: str | None, md5: str | None) -> str | None:
    return None if sha256 or md5 else "no sha256 or md5 to check the file against"


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
    problem = record_problem(record)
    if problem:
        raise BadPackage(f"info/index.json: {problem}")
    return dict(sorted(record.items()))
