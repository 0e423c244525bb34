"""The bytes of repodata.json and its compressed forms, the same on every run.

Determinism is what keeps HTTP caches, ETags and the JLAP log quiet when nothing
changed: sorted keys, fixed indentation, a fixed zstd level.
"""

from __future__ import annotations

import bz2
from collections.abc import Mapping
from typing import Any

import orjson
import zstandard

from conda_ferry.gateways import CHUNK, MAX_EXPANSION, expansion_limit

from .compact import as_dict
from .outputs import ZSTD_LEVEL
from .records import SECTIONS


def build(
    subdir: str,
    packages: Mapping[str, Mapping[str, Any]],
    packages_conda: Mapping[str, Mapping[str, Any]],
    removed: list[str] | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    info: dict[str, Any] = {"subdir": subdir}
    if base_url:
        info["base_url"] = base_url
    return {
        "info": info,
        "packages": packages,
        "packages.conda": packages_conda,
        "removed": sorted(set(removed or ())),
        "repodata_version": 2 if base_url else 1,
    }


def records(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every record of a document by file name, both sections as one mapping."""
    merged: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        items = document.get(section) or {}
        if isinstance(items, dict):
            merged.update(items)
    return merged


def dumps(document: dict[str, Any]) -> bytes:
    """Records read compactly (index.compact) are decoded one by one as they are
    written, never all at once."""
    return orjson.dumps(
        document, default=as_dict, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2
    )


def loads(data: bytes) -> dict[str, Any]:
    """A repodata document whose every record names its package and size, as writers
    build on (a file on a target may have been damaged since it was written);
    :class:`ValueError` says why not."""
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("repodata is not a JSON object")
    for section in SECTIONS:
        items = value.get(section)
        if items is None:
            continue
        if not isinstance(items, dict):
            raise ValueError(f"'{section}' is not a JSON object")
        for filename, record in items.items():
            if not (
                isinstance(record, dict)
                and isinstance(record.get("name"), str)
                and type(record.get("size")) is int
            ):
                raise ValueError(f"the record of {filename[:200]!r} names no package or size")
    return value


def zst(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """zstd's own threads on a large repodata.json (a conda-forge subdir's 330 MB in
    half the time on two cores). Their output does not depend on how many there are,
    and below a job's size (several MB) it is the one-threaded output byte for byte."""
    return zstandard.ZstdCompressor(level=level, threads=-1).compress(data)


def unzst(data: bytes | bytearray) -> bytearray:
    """The decompressed bytes, read chunk by chunk (a frame's declared size is not
    trusted); one that expands past what repodata can is refused as a bomb. Grown in
    place: a 200 MB repodata.json is held once, not once per chunk and once joined."""
    limit = expansion_limit(len(data))
    reader = zstandard.ZstdDecompressor().stream_reader(data)
    out = bytearray()
    while chunk := reader.read(CHUNK):
        out += chunk
        if len(out) > limit:
            raise zstandard.ZstdError(
                f"expands more than {MAX_EXPANSION}-fold (a decompression bomb?)"
            )
    return out


def bz2_bytes(data: bytes) -> bytes:
    return bz2.compress(data, 9)


def current(document: dict[str, Any]) -> dict[str, Any]:
    """current_repodata.json: the newest version of each name, every build of it.

    Uses rattler's conda version ordering; dependencies are not pulled in (a client
    falls back to the full repodata when current does not solve).
    """
    from .rattlertypes import Version

    newest: dict[str, Version] = {}
    parsed: dict[str, Version] = {}

    def version_of(record: dict[str, Any]) -> Version:
        text = str(record["version"])
        return parsed.get(text) or parsed.setdefault(text, Version(text))

    for key in SECTIONS:
        for record in document.get(key, {}).values():
            version = version_of(record)
            if record["name"] not in newest or newest[record["name"]] < version:
                newest[record["name"]] = version
    trimmed = dict(document)
    for key in SECTIONS:
        trimmed[key] = {
            fn: rec
            for fn, rec in document.get(key, {}).items()
            if version_of(rec) == newest[rec["name"]]
        }
    return trimmed
