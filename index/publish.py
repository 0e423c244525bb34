"""Write one subdir's index outputs in the order that keeps every client consistent.

Order: new shards (durable) then the shard index, and meanwhile repodata.json.zst
(and .bz2), repodata.json, repodata.jlap; then auxiliary files; stale shards last.
A kill at any instant leaves each of these readable, the previous version or the
new one: each file is replaced atomically, and nothing refers to a file that is not
yet there.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import msgspec

from conda_ferry.gateways import Gateway, GatewayError, NotFound, is_temp

from . import jlap, repodata, shards
from .compact import Records
from .outputs import OutputOptions

__all__ = ["Aside", "OutputOptions", "Written", "publish_subdir", "when_asked", "write_if_changed"]

log = logging.getLogger("ferry.index")
T = TypeVar("T")


class Aside(Protocol):
    """Starts ``job(gateway, *args)`` where it runs beside this process's own work (a
    worker process of a sync), or nowhere yet; the callable returned gives its result."""

    def __call__(
        self, job: Callable[..., T], gateway: Gateway, /, *args: Any
    ) -> Callable[[], T]: ...


def when_asked(job: Callable[..., T], gateway: Gateway, *args: Any) -> Callable[[], T]:
    """No other process: the job runs when its result is asked for."""
    return functools.partial(job, gateway, *args)


class Written(msgspec.Struct):
    paths: list[str] = []
    deleted: list[str] = []
    # shards no published index names any more: a client holding yesterday's index
    # may still ask for them, so the caller decides when they go
    stale: list[str] = []
    shard_keys: dict[str, str] = {}  # to pass next time (see write_shards)


SHA256_HEX = re.compile("[0-9a-f]{64}")

# What each output writes, so that one switched off is removed, not left stale.
OUTPUT_FILES = {
    "zst": "repodata.json.zst",
    "bz2": "repodata.json.bz2",
    "jlap": "repodata.jlap",
    "current_repodata": "current_repodata.json",
    "shards": shards.INDEX_NAME,
}


def write_if_changed(
    gateway: Gateway, path: str, data: bytes, written: Written, current: bytes | None = None
) -> bool:
    """Replace ``path`` unless it already holds exactly ``data``: caches stay valid.

    ``current``: the file's bytes when the caller has read them already."""
    if current is not None:
        if current == data:
            return False
    else:
        try:
            if gateway.info(path).size == len(data) and gateway.read_bytes(path) == data:
                return False
        except NotFound:
            pass
    gateway.write_bytes(path, data)
    written.paths.append(path)
    return True


def _read_existing(gateway: Gateway, path: str) -> bytes | None:
    try:
        return gateway.read_bytes(path)
    except NotFound:
        return None


def _intact(gateway: Gateway, path: str, data: bytes) -> bool:
    try:
        if gateway.read_bytes(path) == data:
            return True
        why = "damaged"
    except GatewayError as exc:
        why = exc.message
    log.warning("%s: %s; writing it again", gateway.display(path), why)
    return False


class Sharded(msgspec.Struct):
    """What :func:`write_shards` did: the shard index's bytes (None: shards are off),
    the paths written, the shards no longer named, and each name's shard key (see
    :func:`shards.build`)."""

    index: bytes | None
    written: list[str]
    stale: list[str]
    keys: dict[str, str]


def write_shards(
    gateway: Gateway,
    subdir: str,
    document: dict[str, Any] | None,
    reread: bool = False,
    known: Mapping[str, str] | None = None,
) -> Sharded:
    """The shards of ``document`` not there yet, written and durable. Half a large
    subdir's publication, which another process may do while this one writes the
    rest. Without a ``document`` (shards switched off), every shard is stale.

    A shard present is trusted by its name (its content's hash) unless ``reread``:
    then it is read back, and written again if damaged; ``known``: the keys the last
    publication returned, for names whose shard is still there."""
    have: set[str] = set()
    for info in gateway.files(f"{subdir}/{shards.SHARDS_DIR}"):
        if is_temp(info.name):
            gateway.delete(info.path)  # a killed run's half-written shard
        elif info.name.endswith(".msgpack.zst"):
            have.add(info.path.split("/", 1)[1])
    if document is None:
        return Sharded(None, [], sorted(have), {})
    trusted = {} if reread else _present(known or {}, have)
    index_bytes, shard_files, keys = shards.build(document, trusted)
    new = {shards.shard_path(h): data for h, data in shard_files.items()}
    if reread:
        have -= {p for p in have & new.keys() if not _intact(gateway, f"{subdir}/{p}", new[p])}
    paths = gateway.write_many(
        (f"{subdir}/{path}", data)
        for path, data in new.items()
        if path not in have  # content-addressed: present means identical
    )
    if paths:
        gateway.flush()  # one flush for all shards, before the index names them
    named = {shards.keyed_path(key) for key in keys.values()} | new.keys()
    return Sharded(index_bytes, paths, sorted(have - named), keys)


def _present(known: Mapping[str, str], have: set[str]) -> dict[str, str]:
    """The keys whose shard is there (a state may name one since deleted, or be
    damaged: a key that names no file is not taken)."""
    taken = {}
    for name, key in known.items():
        if SHA256_HEX.fullmatch(key.rpartition(" ")[2]) and shards.keyed_path(key) in have:
            taken[name] = key
    return taken


def publish_subdir(
    gateway: Gateway,
    subdir: str,
    document: dict[str, Any],
    options: OutputOptions,
    extra_files: dict[str, bytes] | None = None,
    old_json: bytes | None = None,
    existing: set[str] | None = None,
    aside: Aside = when_asked,
    reread: bool = False,
    shard_keys: Mapping[str, str] | None = None,
) -> Written:
    """Publish ``document`` as ``subdir``'s repodata and everything derived from it.

    ``old_json``: the repodata.json published now, as the caller read it;
    ``existing``: the names of the files in the subdir (outputs switched off since
    are removed once the new repodata.json is out); ``aside``: where the shards are
    written while this process writes the rest; ``reread``: shards present read back,
    ``shard_keys``: the last publication's (see :func:`write_shards`)."""
    written = Written()
    sharding = None  # started first: it is the longer half, and links nothing yet
    if options.shards or shards.INDEX_NAME in (existing or ()):
        sent = document
        if aside is not when_asked:  # its records pickled in one go, for another process
            sent = {k: Records(v) if k in repodata.SECTIONS else v for k, v in document.items()}
        document_or_none = sent if options.shards else None
        sharding = aside(write_shards, gateway, subdir, document_or_none, reread, shard_keys)
    gateway.flush()  # every package written so far durable before any repodata names it
    new_json = repodata.dumps(document)

    if options.zst:
        write_if_changed(
            gateway,
            f"{subdir}/repodata.json.zst",
            repodata.zst(new_json, options.zst_level),
            written,
        )
    if options.bz2:
        write_if_changed(
            gateway, f"{subdir}/repodata.json.bz2", repodata.bz2_bytes(new_json), written
        )
    if old_json != new_json:
        gateway.write_bytes(f"{subdir}/repodata.json", new_json)
        written.paths.append(f"{subdir}/repodata.json")
    if options.current_repodata:
        write_if_changed(
            gateway,
            f"{subdir}/current_repodata.json",
            repodata.dumps(repodata.current(document)),
            written,
        )

    if options.jlap:
        old_log = _read_existing(gateway, f"{subdir}/repodata.jlap")
        log_bytes = jlap.update(
            old_log, old_json, new_json, options.jlap_max_bytes, options.jlap_max_patch_bytes
        )
        write_if_changed(gateway, f"{subdir}/repodata.jlap", log_bytes, written, old_log)

    for path, data in (extra_files or {}).items():
        write_if_changed(gateway, f"{subdir}/{path}", data, written)

    if sharding is not None:
        sharded = sharding()
        written.paths.extend(sharded.written)
        written.stale, written.shard_keys = sharded.stale, sharded.keys
        if sharded.index is not None:
            write_if_changed(gateway, f"{subdir}/{shards.INDEX_NAME}", sharded.index, written)
    for key, name in OUTPUT_FILES.items():
        if not getattr(options, key) and name in (existing or ()):
            gateway.delete(f"{subdir}/{name}")
            written.deleted.append(f"{subdir}/{name}")
    return written
