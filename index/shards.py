"""Sharded repodata (CEP 16): one content-addressed msgpack.zst file per package name."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import msgpack
import orjson
import zstandard

from .compact import as_fragment, bulk, own
from .repodata import SECTIONS

# Digests dominate a shard and do not compress: on a real subdir (r, linux-64: 393
# shards) level 6 builds them in 30 ms against level 10's 38 ms, at the same size
# (455 kB); level 3 is 3% larger, level 19 0.6% smaller for 12x the time.
ZSTD_LEVEL = 6
INDEX_NAME = "repodata_shards.msgpack.zst"
SHARDS_DIR = "shards"
PACKING = f"msgpack, binary digests, zstd {ZSTD_LEVEL}".encode()  # a new way: new keys


def _binary_digests(record: Mapping[str, Any]) -> dict[str, Any]:
    out = own(record)  # a copy: the record itself is published as it is
    for key in ("md5", "sha256"):
        value = out.get(key)
        if isinstance(value, str):
            try:  # noqa: SIM105 (a suppress() per digest: a fifth of the build)
                out[key] = bytes.fromhex(value)
            except ValueError:
                pass
    return out


def _pack(value: Any, compressor: zstandard.ZstdCompressor) -> bytes:
    return compressor.compress(msgpack.packb(value, use_bin_type=True))


def _key(builds: list[tuple[str, str, Mapping[str, Any]]]) -> str | None:
    """What a name's shard is made of, hashed: its records as they were read (an
    upstream record's raw JSON), and how a shard is packed. None: not hashable here
    (an integer past 64 bits), so built every time."""
    try:
        data = orjson.dumps(builds, default=as_fragment, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None
    return hashlib.blake2b(PACKING + data, digest_size=16).hexdigest()


def build(
    repodata: dict[str, Any], known: Mapping[str, str] | None = None
) -> tuple[bytes, dict[str, bytes], dict[str, str]]:
    """The shard index bytes, each new shard file's bytes by its hex sha256, and each
    name's key and shard, "key sha256", to pass as ``known`` next time: a name whose
    records are unchanged takes its shard from there, not built again (on a large
    subdir, most names most nights)."""
    digests, shard_files, keys = build_part(repodata, known)
    return pack_index(repodata.get("info", {}), digests), shard_files, keys


@bulk()  # a dict for each of a subdir's records
def build_part(
    repodata: Mapping[str, Any], known: Mapping[str, str] | None = None
) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, str]]:
    """:func:`build` for the names of ``repodata`` (some of a subdir's, in a part
    another process builds), with each name's shard digest for :func:`pack_index`."""
    by_name: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = defaultdict(list)
    for section in SECTIONS:
        records = repodata.get(section, {})
        for filename in sorted(records):
            by_name[records[filename]["name"]].append((section, filename, records[filename]))
    known = known or {}
    shard_files: dict[str, bytes] = {}
    digests: dict[str, bytes] = {}
    keys: dict[str, str] = {}
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)  # made once: setup dominates
    for name in sorted(by_name):  # one shard's records decoded at a time
        builds = by_name[name]
        key = _key(builds)
        was = known.get(name, "").split(" ")
        if key is not None and len(was) == 2 and was[0] == key:
            digests[name] = bytes.fromhex(was[1])
        else:
            shard: dict[str, Any] = {"packages": {}, "packages.conda": {}, "removed": []}
            for section, filename, record in builds:
                shard[section][filename] = _binary_digests(record)
            data = _pack(shard, compressor)
            digests[name] = hashlib.sha256(data).digest()
            shard_files[digests[name].hex()] = data
        if key is not None:
            keys[name] = f"{key} {digests[name].hex()}"
    return digests, shard_files, keys


def pack_index(info: Mapping[str, Any], digests: Mapping[str, bytes]) -> bytes:
    """The shard index of a subdir whose names have these shard ``digests``."""
    info = dict(info)
    info.setdefault("base_url", "")
    info["shards_base_url"] = f"./{SHARDS_DIR}/"
    index = {name: digests[name] for name in sorted(digests)}
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return _pack({"version": 1, "info": info, "shards": index}, compressor)


def keyed_path(key: str) -> str:
    """The shard a "key sha256" of :func:`build` names."""
    return shard_path(key.rpartition(" ")[2])


def shard_path(digest_hex: str) -> str:
    return f"{SHARDS_DIR}/{digest_hex}.msgpack.zst"
