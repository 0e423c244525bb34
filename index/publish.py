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
from typing import Any

import msgspec

from conda_ferry.gateways import Gateway, GatewayError, NotFound, is_temp

from . import jlap, repodata, shards
from .outputs import OutputOptions

__all__ = ["OutputOptions", "Written", "publish_subdir", "write_if_changed"]

log = logging.getLogger("ferry.index")


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
    """The shards of ``document`` not there yet, written and durable, all in this
    process (a writer with worker processes has each write a part of the names:
    :func:`write_shard_part`, :func:`join_shards`). Without a ``document`` (shards
    switched off), every shard is stale.

    A shard present is trusted by its name (its content's hash) unless ``reread``:
    then it is read back, and written again if damaged; ``known``: the keys the last
    publication returned, for names whose shard is still there."""
    have = present_shards(gateway, subdir)
    if document is None:
        return Sharded(None, [], sorted(have), {})
    part = write_shard_part(gateway, subdir, document, have, reread, known)
    return join_shards(document.get("info", {}), have, [part])


def present_shards(gateway: Gateway, subdir: str) -> set[str]:
    """The subdir's shard files, by path in the subdir; a killed run's half-written
    one is deleted."""
    have: set[str] = set()
    for name in gateway.names(f"{subdir}/{shards.SHARDS_DIR}"):
        if is_temp(name):
            gateway.delete(f"{subdir}/{shards.SHARDS_DIR}/{name}")
        elif name.endswith(".msgpack.zst"):
            have.add(f"{shards.SHARDS_DIR}/{name}")
    return have


class ShardPart(msgspec.Struct):
    """The shards of some of a subdir's names (see :func:`write_shard_part`)."""

    digests: dict[str, bytes]  # name -> its shard's sha256
    written: list[str]
    keys: dict[str, str]


def write_shard_part(
    gateway: Gateway,
    subdir: str,
    document: Mapping[str, Any],
    have: set[str],
    reread: bool = False,
    known: Mapping[str, str] | None = None,
    flush: bool = True,
    staging: str | None = None,
) -> ShardPart:
    """The shards of the names in ``document`` (all of a subdir's, or a part of them
    that another process writes beside the others) not in ``have``, written and
    durable (unless not ``flush``: then the caller's next flush makes them so, before
    the index names them); :func:`join_shards` makes the parts one index. With a
    ``staging`` directory (the shards directory's, while it is made: no shard is
    there), they are written in it, and named as they will be once it is renamed."""
    trusted = {} if reread else _present(known or {}, have)
    digests, shard_files, keys = shards.build_part(document, trusted)
    new = {shards.shard_path(h): data for h, data in shard_files.items()}
    if reread:
        have = have - {
            p for p in have & new.keys() if not _intact(gateway, f"{subdir}/{p}", new[p])
        }
    if staging is not None:
        gateway.write_many(
            ((f"{staging}/{path.rpartition('/')[2]}", data) for path, data in new.items()),
            unseen=True,
        )
        paths = [f"{subdir}/{path}" for path in new]
    else:
        paths = gateway.write_many(
            (f"{subdir}/{path}", data)
            for path, data in new.items()
            if path not in have  # content-addressed: present means identical
        )
    if paths and flush:
        gateway.flush()  # one flush for all shards, before the index names them
    return ShardPart(digests, paths, keys)


def join_shards(info: Mapping[str, Any], have: set[str], parts: list[ShardPart]) -> Sharded:
    """One subdir's shards from its parts: the index of every name, and the shards
    present that it no longer names."""
    digests: dict[str, bytes] = {}
    keys: dict[str, str] = {}
    written: list[str] = []
    for part in parts:
        digests.update(part.digests)
        keys.update(part.keys)
        written.extend(part.written)
    named = {shards.shard_path(digest.hex()) for digest in digests.values()}
    return Sharded(shards.pack_index(info, digests), written, sorted(have - named), keys)


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
    reread: bool = False,
    shard_keys: Mapping[str, str] | None = None,
    sharded: Callable[[], Sharded] | None = None,
) -> Written:
    """Publish ``document`` as ``subdir``'s repodata and everything derived from it.

    ``old_json``: the repodata.json published now, as the caller read it;
    ``existing``: the names of the files in the subdir (outputs switched off since
    are removed once the new repodata.json is out); ``reread``: shards present read
    back, ``shard_keys``: the last publication's (see :func:`write_shards`);
    ``sharded``: what gives the shards where the caller has them written beside this
    (in other processes); else they are written here, after the repodata, before
    their index."""
    written = Written()
    sharding = sharded
    if sharding is None and (options.shards or shards.INDEX_NAME in (existing or ())):
        shown = document if options.shards else None  # None: every shard is stale
        sharding = functools.partial(write_shards, gateway, subdir, shown, reread, shard_keys)
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
        done = sharding()
        written.paths.extend(done.written)
        written.stale, written.shard_keys = done.stale, done.keys
        if done.index is not None:
            write_if_changed(gateway, f"{subdir}/{shards.INDEX_NAME}", done.index, written)
    for key, name in OUTPUT_FILES.items():
        if not getattr(options, key) and name in (existing or ()):
            gateway.delete(f"{subdir}/{name}")
            written.deleted.append(f"{subdir}/{name}")
    return written
