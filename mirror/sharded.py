"""Read an upstream's sharded repodata (CEP 16) for only the names a job needs.

A job driven by names (``include``, with or without ``dependencies``) needs the
records of those names and, transitively, of the names their kept records depend
on: on a conda-forge subdir that is a few hundred shards of tens of thousands,
kilobytes to megabytes instead of a 30 MB ``.zst`` that parses to gigabytes. The
closure is found the way the selector finds it, so the records a sharded run sees
select exactly what the whole ``repodata.json`` would.

Shards are content-addressed: a fetched shard is kept under the target's
``.ferry/shard-cache/`` and never fetched again; the index is fetched
conditionally, so an unchanged upstream costs one request per subdir.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import msgspec
import zstandard

from conda_ferry.gateways import Gateway, GatewayOptions, NotFound, is_temp, open_gateway
from conda_ferry.index import repodata, shards
from conda_ferry.index.compact import Checker
from conda_ferry.index.repodata import SECTIONS

from .errors import FerryError
from .filters import Filters, Selector, SpecMatcher
from .state import STATE_DIR
from .upstream import package_location

log = logging.getLogger("ferry.sharded")
INDEX = shards.INDEX_NAME
CACHE_DIR = f"{STATE_DIR}/shard-cache"
Record = Mapping[str, Any]  # a dict, or upstream JSON read compactly (index.compact)


class ShardIndex(msgspec.Struct):
    subdir: str
    info: dict[str, Any]
    shards: dict[str, str]  # package name -> hex sha256 of its shard
    etag: str | None
    last_modified: str | None
    size: int  # bytes of the index as served


class Closure(msgspec.Struct):
    """What the sharded path read: documents in repodata.json form, and its cost."""

    documents: dict[str, dict[str, Any]]
    bytes: dict[str, int] = {}  # subdir -> repodata bytes read
    shards: dict[str, int] = {}  # subdir -> shards used
    used: set[str] = set()  # digests of every shard used


def _unpack(data: bytes, where: str) -> Any:
    """msgpack inside zstd, the frame's declared size never trusted (servers write
    frames without one)."""
    try:
        return msgpack.unpackb(repodata.unzst(data), raw=False, strict_map_key=False)
    # TypeError: a map whose key is a map or an array (unhashable in Python)
    except (zstandard.ZstdError, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FerryError(f"{where}: not a zstd-compressed msgpack document ({exc})") from None


def _hex(value: Any) -> Any:
    """A digest as repodata.json writes it: msgpack binary or an array of byte values
    (both are served) become lower-case hex; anything else is left for the record
    checks to refuse."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).hex()
    return value


def fetch_index(
    source: Gateway, subdir: str, etag: str | None = None, last_modified: str | None = None
) -> ShardIndex | None:
    """The subdir's shard index, None when unchanged; :class:`NotFound` when the
    upstream serves none."""
    path = f"{subdir}/{INDEX}"
    fetched = source.fetch_if_changed(path, etag, last_modified)
    if fetched is None:
        return None
    with fetched:
        data = fetched.stream.read()
    raw = _unpack(data, source.display(path))
    info, names = (raw.get("info"), raw.get("shards")) if isinstance(raw, dict) else (None, None)
    if not isinstance(info, dict) or not isinstance(names, dict):
        raise FerryError(f"{source.display(path)}: a shard index needs 'info' and 'shards'")
    digests = {str(name): _hex(digest) for name, digest in names.items()}
    bad = next((n for n, d in digests.items() if not _is_digest(d)), None)
    if bad is not None:
        raise FerryError(f"{source.display(path)}: the shard hash of {bad[:100]!r} is malformed")
    return ShardIndex(subdir, info, digests, fetched.info.etag, fetched.last_modified, len(data))


def read_index(source: Gateway, subdir: str) -> ShardIndex:
    index = fetch_index(source, subdir)
    assert index is not None  # without validators a file is always news
    return index


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")


class ShardReader:
    """Shards of one subdir, from the cache on the target or from upstream."""

    def __init__(
        self,
        source: Gateway,
        target: Gateway | None,
        index: ShardIndex,
        options: GatewayOptions,
        allow_hosts: tuple[str, ...],
        stack: contextlib.ExitStack,
    ) -> None:
        self.index, self.target = index, target
        base = index.info.get("shards_base_url") or f"./{shards.SHARDS_DIR}/"
        # the same rules as a package's base_url: upstream metadata may not send the
        # runner anywhere its job does not allow
        url = package_location(source.url, index.subdir, base, allow_hosts)
        root = source.url.rstrip("/") + "/"
        if url.startswith(root):
            self.gateway, self.prefix = source, url[len(root) :]
        else:
            self.gateway, self.prefix = stack.enter_context(open_gateway(url, options)), ""
        self.fetched = 0  # bytes read from upstream

    def records(self, name: str) -> dict[str, dict[str, Record]]:
        digest = self.index.shards[name]
        path = f"{self.prefix}{digest}.msgpack.zst"
        cached = f"{CACHE_DIR}/{digest}.msgpack.zst"
        data = None
        if self.target is not None:
            with contextlib.suppress(NotFound):
                data = self.target.read_bytes(cached)
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            data = self.gateway.read_bytes(path)
            self.fetched += len(data)
            if hashlib.sha256(data).hexdigest() != digest:
                raise FerryError(
                    f"{self.gateway.display(path)}: its sha256 is not the one the shard index "
                    "names (a stale cache between you and upstream? try again later)"
                )
            if self.target is not None:
                self.target.write_bytes(cached, data, durable=False)
        shard = _unpack(data, self.gateway.display(path))
        if not isinstance(shard, dict):
            raise FerryError(f"{self.gateway.display(path)}: a shard is a map of sections")
        out: dict[str, dict[str, Record]] = {}
        for section in SECTIONS:
            items = shard.get(section) or {}
            if not isinstance(items, dict):
                raise FerryError(f"{self.gateway.display(path)}: '{section}' is not a map")
            out[section] = {
                str(fn): {k: _hex(v) if k in ("md5", "sha256") else v for k, v in r.items()}
                if isinstance(r, dict)
                else r
                for fn, r in items.items()
            }
        return out


def _dep_name(text: Any) -> str | None:
    try:
        name = SpecMatcher(str(text)).name
    except ValueError:
        return None
    return None if name is None or name.startswith("__") else name


def _fit(document: dict[str, Any]) -> dict[str, Record]:
    """Records fit to select from (the sync checks them again, and names the refused)."""
    checked = Checker()
    return {
        fn: fit
        for section in SECTIONS
        for fn, r in (document.get(section) or {}).items()
        if (fit := checked(r)[0]) is not None
    }


def _wanted(filters: Filters, names: set[str]) -> set[str]:
    """The names the include specs select (globs matched against the indexes)."""
    found: set[str] = set()
    catalogue = dict.fromkeys(names)
    for text in filters.include or ():
        found.update(SpecMatcher(text).names(catalogue))  # type: ignore[arg-type]
    return found | {entry.name for entry in filters.locked}


def closure(
    readers: dict[str, ShardReader],
    whole: dict[str, dict[str, Any]],
    filters: Filters,
    jobs: int,
) -> Closure:
    """Documents holding every record the selection can reach: the include names',
    then, round by round, those of the names the kept records depend on.

    ``whole``: subdirs read from their full ``repodata.json`` (no shard index)."""
    documents: dict[str, dict[str, Any]] = {
        subdir: {
            "info": {k: v for k, v in reader.index.info.items() if k != "shards_base_url"},
            **{section: {} for section in SECTIONS},
        }
        for subdir, reader in readers.items()
    }
    documents.update(whole)
    fit = {subdir: _fit(document) for subdir, document in documents.items()}  # grows by shard
    every = {n for r in readers.values() for n in r.index.shards}
    every |= {str(r.get("name")) for s in whole for r in fit[s].values()}
    wanted, done = _wanted(filters, every), set[str]()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while wanted - done:
            batch = sorted(wanted - done)
            work = [(s, n) for s, r in readers.items() for n in batch if n in r.index.shards]
            for (subdir, _), sections in zip(
                work, pool.map(lambda item: readers[item[0]].records(item[1]), work), strict=True
            ):
                for section, items in sections.items():
                    documents[subdir][section].update(items)
                fit[subdir].update(_fit(sections))  # each record checked once
            done.update(batch)
            if not filters.dependencies:
                break
            kept = Selector(filters).select(fit).kept
            for records in kept.values():
                for record in records.values():
                    wanted.update(n for d in record.get("depends") or [] if (n := _dep_name(d)))
    result = Closure(documents)
    for subdir, reader in readers.items():
        result.bytes[subdir] = reader.index.size + reader.fetched
        names = done & reader.index.shards.keys()
        result.shards[subdir] = len(names)
        result.used.update(reader.index.shards[n] for n in names)
    return result


def prune_cache(target: Gateway, used: set[str]) -> None:
    """Drop cached shards this run did not use (superseded upstream, or of names the
    job no longer needs), and a killed run's partial writes: the cache stays the
    size of the closure. A shard that is needed again is fetched again."""
    stale = time.time() - 3600  # a partial write this old has no writer left
    for info in target.files(CACHE_DIR):
        if is_temp(info.name):
            if (info.mtime or 0) < stale:
                target.delete(info.path)
        elif info.name.split(".")[0] not in used:
            target.delete(info.path)
