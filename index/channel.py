"""Index a channel on any gateway: read what changed, publish every subdir's outputs."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from conda_ferry.gateways import FileInfo, Gateway, GatewayError

from . import channeldata, patches, repodata
from .compact import bulk, unwired, wired
from .package import BadPackage, read_package
from .publish import (
    OutputOptions,
    Sharded,
    Written,
    publish_subdir,
    write_if_changed,
)
from .records import (
    EXTENSIONS,
    BadFilename,
    Entry,
    check_filename,
    package_key,
    record_from_package,
)
from .subdir import SubdirView

if TYPE_CHECKING:
    from .cache import IndexCache

log = logging.getLogger("ferry.index")
KNOWN_SUBDIRS = {
    "noarch",
    "linux-32",
    "linux-64",
    "linux-aarch64",
    "linux-armv6l",
    "linux-armv7l",
    "linux-ppc64",
    "linux-ppc64le",
    "linux-riscv64",
    "linux-s390x",
    "osx-64",
    "osx-arm64",
    "win-32",
    "win-64",
    "win-arm64",
    "emscripten-wasm32",
    "wasi-wasm32",
    "zos-z",
}


class IndexOptions(msgspec.Struct):
    subdirs: list[str] | None = None
    outputs: OutputOptions = msgspec.field(default_factory=OutputOptions)
    patch_instructions: dict[str, dict[str, Any]] | None = None  # subdir ("*": all) -> patch
    jobs: int = os.cpu_count() or 2
    cache_dir: Path | None = None
    channeldata: bool = True
    run_exports: bool = True
    # a repair: shards (trusted by their names) read back, pages (by the state) rewritten
    reread: bool = False


class SubdirSummary(msgspec.Struct):
    subdir: str
    packages: int = 0
    read: int = 0
    cached: int = 0
    skipped: list[tuple[str, str]] = []
    written: list[str] = []
    deleted: list[str] = []
    stale: list[str] = []  # shards, relative to the subdir
    published: set[str] = set()  # file names repodata.json now lists
    shard_keys: dict[str, str] = {}  # name -> "key sha256" of its shard


class IndexSummary(msgspec.Struct):
    url: str
    subdirs: list[SubdirSummary] = []
    written: list[str] = []
    seconds: float = 0.0

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(f"{s.subdir}/{fn}", why) for s in self.subdirs for fn, why in s.skipped]

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "seconds": round(self.seconds, 3),
            "packages": sum(s.packages for s in self.subdirs),
            "read": sum(s.read for s in self.subdirs),
            "cached": sum(s.cached for s in self.subdirs),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "written": self.written + [p for s in self.subdirs for p in s.written],
            "subdirs": {
                s.subdir: {
                    "packages": s.packages,
                    "read": s.read,
                    "cached": s.cached,
                    "skipped": len(s.skipped),
                    "written": s.written,
                }
                for s in self.subdirs
            },
        }


def discover_subdirs(gateway: Gateway) -> list[str]:
    """Directories that look like subdirs: a known platform name, or holding packages."""
    found = {"noarch"}
    for entry in gateway.list(""):
        if not entry.is_dir:
            continue
        if entry.path in KNOWN_SUBDIRS or any(
            f.path.endswith((*EXTENSIONS, "/repodata.json")) for f in gateway.files(entry.path)
        ):
            found.add(entry.path)
    return sorted(found)


def published_subdirs(gateway: Gateway) -> list[str]:
    """The subdirs that publish a repodata.json now."""
    return [s for s in discover_subdirs(gateway) if gateway.exists(f"{s}/repodata.json")]


def _stamp(info: FileInfo) -> str:
    return info.etag or f"{info.size}:{info.mtime}"


def _read_one(gateway: Gateway, path: str, filename: str) -> Entry:
    with gateway.open_read(path) as stream:
        meta = read_package(filename, stream)
    return Entry(
        record_from_package(meta),
        {"about": meta.about, "run_exports": meta.run_exports, "features": meta.features},
    )


def _sweep(gateway: Gateway, view: SubdirView) -> None:
    """Remove what a killed run left half-written; callers hold the subdir's lock."""
    for info in view.temps:
        gateway.delete(info.path)
    view.temps.clear()
    if aborted := gateway.abort_incomplete(view.subdir):
        log.info(
            "%s: aborted %d unfinished upload(s) of a killed run",
            gateway.display(view.subdir),
            aborted,
        )


def scan_subdir(
    gateway: Gateway,
    view: SubdirView,
    open_cache: Callable[[], IndexCache],
    jobs: int,
    summary: SubdirSummary,
    known: Mapping[str, Mapping[str, Any]],
    skip: Collection[str] = (),
    extras: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Entry]:
    """Records for every valid package in the subdir, reading only what changed.

    ``known``: records to take as given for files present (never read); ``skip``:
    files present that are not to be published; ``extras``: what channeldata and
    run_exports.json need of a known record (about, run_exports, flags), by file name;
    ``open_cache``: the cache of packages read before, opened only where a file is not
    ``known`` (a mirror's subdir never needs it: its SQLite file, made and opened,
    cost every commit of a cold sync a few ms on its critical path).
    """
    files: dict[str, FileInfo] = {}
    for name, info in view.packages.items():
        if name in skip:
            continue
        try:
            files[check_filename(name)] = info
        except BadFilename as exc:
            _skipped(gateway, view.subdir, summary, name, str(exc))
    entries: dict[str, Entry] = {}
    unknown: list[str] = []
    for name, info in files.items():
        if name not in known:
            unknown.append(name)
        elif int(known[name].get("size", info.size)) == info.size:
            entries[name] = Entry(known[name], (extras or {}).get(name, {}))
        else:
            _skipped(gateway, view.subdir, summary, name, "size differs from its record")
    if unknown:
        cache = open_cache()
        try:
            _read_unknown(gateway, view, cache, jobs, summary, files, unknown, entries)
        finally:
            cache.close()
    summary.packages = len(entries)
    return {name: entries[name] for name in files if name in entries}  # in listing order


def _skipped(gateway: Gateway, subdir: str, summary: SubdirSummary, name: str, why: str) -> None:
    """A file not published, named on stderr as it is found and in the summary."""
    log.warning("skipping %s: %s", gateway.display(f"{subdir}/{name}"), why)
    summary.skipped.append((name, why))


def _open_cache(channel_url: str, directory: Path | None) -> IndexCache:
    from .cache import IndexCache  # and SQLite: where no package is read, neither is

    return IndexCache(channel_url, directory)


def _read_unknown(
    gateway: Gateway,
    view: SubdirView,
    cache: IndexCache,
    jobs: int,
    summary: SubdirSummary,
    files: dict[str, FileInfo],
    unknown: list[str],
    entries: dict[str, Entry],
) -> None:
    """The records of ``unknown`` files, from the cache or read, into ``entries``."""
    subdir = view.subdir
    cached = cache.load(subdir)
    todo: list[str] = []
    for name in unknown:
        info = files[name]
        hit = cached.get(name)
        if hit and hit[0] == info.size and hit[1] == _stamp(info):
            entries[name] = hit[2]
            summary.cached += 1
        else:
            todo.append(name)
    cache.forget(subdir, [name for name in cached if name not in files])

    fresh: list[tuple[str, int, str, Entry]] = []

    def work(name: str) -> tuple[str, Entry | str]:
        try:
            return name, _read_one(gateway, f"{subdir}/{name}", name)
        except BadPackage as exc:
            return name, str(exc)
        except GatewayError as exc:
            return name, f"cannot read: {exc.message}"

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for name, result in pool.map(work, sorted(todo)):
            if isinstance(result, str):
                _skipped(gateway, subdir, summary, name, result)
                continue
            record_subdir = result.record.get("subdir")
            if record_subdir not in (None, subdir):
                _skipped(gateway, subdir, summary, name, f"built for {record_subdir}, not {subdir}")
                continue
            entries[name] = result
            info = files[name]
            fresh.append((name, info.size, _stamp(info), result))
    cache.store(subdir, fresh)
    summary.read = len(fresh)


class ChannelEntry(NamedTuple):
    """A published record with what channeldata and the pages say of it."""

    subdir: str
    filename: str
    record: Mapping[str, Any]
    extras: dict[str, Any]  # about, run_exports, features


class ChannelEntries(list[ChannelEntry]):
    """Entries pickled in one go as plain tuples, their records wired (a named tuple
    and a raw record each cost the pickler a Python call: 1,600 entries sent to the
    worker that writes their pages took 6 ms here, 2 ms so, before it could begin)."""

    def __reduce__(self) -> tuple[Any, tuple[list[tuple[Any, ...]]]]:
        return _entries, ([(e.subdir, e.filename, wired(e.record), e.extras) for e in self],)


def _entries(values: list[tuple[Any, ...]]) -> ChannelEntries:
    return ChannelEntries(ChannelEntry(s, f, unwired(r), x) for s, f, r, x in values)


class BuiltSubdir(msgspec.Struct):
    """A subdir's repodata, made and not yet published; ``entries``: its records."""

    summary: SubdirSummary
    document: dict[str, Any]
    extra_files: dict[str, bytes]
    entries: list[ChannelEntry]


@bulk()  # a record, an entry and its extras for each of up to 600,000 packages
def build_subdir(
    gateway: Gateway,
    view: SubdirView,
    options: IndexOptions,
    known: Mapping[str, Mapping[str, Any]] | None = None,
    skip: Collection[str] = (),
    extras: Mapping[str, dict[str, Any]] | None = None,
) -> BuiltSubdir:
    """Sweep and scan one subdir and make its repodata (patched, if asked), so that
    what describes the records (pages) can be written while they are published."""
    subdir = view.subdir
    summary = SubdirSummary(subdir)
    _sweep(gateway, view)
    open_cache = functools.partial(_open_cache, gateway.url, options.cache_dir)
    entries = scan_subdir(
        gateway, view, open_cache, options.jobs, summary, known or {}, skip, extras
    )
    sections: dict[str, dict[str, Mapping[str, Any]]] = {"packages": {}, "packages.conda": {}}
    for name, entry in sorted(entries.items()):
        sections[package_key(name)][name] = entry.record
    document = repodata.build(subdir, sections["packages"], sections["packages.conda"])
    extra_files: dict[str, bytes] = {}
    instructions = options.patch_instructions or {}
    patch = instructions.get(subdir) or instructions.get("*")
    if patch is not None:
        extra_files["repodata_from_packages.json"] = repodata.dumps(document)
        document = patches.apply(document, patch)
    if options.run_exports:
        extra_files["run_exports.json"] = repodata.dumps(
            channeldata.run_exports_document(
                subdir,
                {
                    n: e.extras["run_exports"]
                    for n, e in entries.items()
                    if e.extras.get("run_exports")
                },
            )
        )
    kept = repodata.records(document)
    summary.published = set(kept)
    return BuiltSubdir(
        summary,
        document,
        extra_files,
        ChannelEntries(
            ChannelEntry(subdir, n, kept[n], e.extras) for n, e in entries.items() if n in kept
        ),
    )


def publish_built(
    gateway: Gateway,
    view: SubdirView,
    options: IndexOptions,
    built: BuiltSubdir,
    shard_keys: Mapping[str, str] | None = None,
    sharded: Callable[[], Sharded] | None = None,
) -> SubdirSummary:
    """``shard_keys``: what the last publication's summary held (see write_shards);
    ``sharded``: the shards where the caller writes them (see publish_subdir)."""
    summary = built.summary
    written = publish_subdir(
        gateway,
        view.subdir,
        built.document,
        options.outputs,
        built.extra_files,
        view.repodata_json,
        view.names,
        options.reread,
        shard_keys,
        sharded,
    )
    summary.written, summary.deleted, summary.stale = written.paths, written.deleted, written.stale
    summary.shard_keys = written.shard_keys
    return summary


def index_subdir(
    gateway: Gateway, view: SubdirView, options: IndexOptions
) -> tuple[SubdirSummary, list[ChannelEntry]]:
    """Sweep, scan and publish one subdir; its entries feed channeldata.json."""
    built = build_subdir(gateway, view, options)
    return publish_built(gateway, view, options, built), built.entries


def channeldata_json(subdirs: list[str], entries: list[ChannelEntry]) -> bytes:
    return repodata.dumps(channeldata.channeldata(subdirs, entries))


def write_channeldata(
    gateway: Gateway, subdirs: list[str], entries: list[ChannelEntry], made: bytes | None = None
) -> list[str]:
    """channeldata.json at the channel root, rewritten only when it changed;
    ``made``: what :func:`channeldata_json` made of the same, where a writer made
    it ahead."""
    top = Written()
    data = channeldata_json(subdirs, entries) if made is None else made
    write_if_changed(gateway, "channeldata.json", data, top)
    return top.paths


def index_channel(gateway: Gateway, options: IndexOptions) -> IndexSummary:
    """Index a plain channel, every record made from its package file."""
    started = time.monotonic()
    summary = IndexSummary(gateway.display())
    subdirs = options.subdirs or discover_subdirs(gateway)
    everything: list[ChannelEntry] = []
    for subdir in subdirs:
        sub, entries = index_subdir(gateway, SubdirView.read(gateway, subdir), options)
        for shard in sub.stale:  # a plain channel keeps no state to remember them by
            gateway.delete(f"{subdir}/{shard}")
        summary.subdirs.append(sub)
        everything.extend(entries)
    if options.channeldata:
        summary.written.extend(write_channeldata(gateway, subdirs, everything))
    summary.seconds = time.monotonic() - started
    return summary


def load_patch_file(gateway: Gateway, path: str) -> dict[str, dict[str, Any]]:
    """Instructions from a patch_instructions.json, applied to every subdir."""
    return {"*": patches.load_instructions(gateway.read_bytes(path), gateway.display(path))}


def load_patch_package(gateway: Gateway, path: str) -> dict[str, dict[str, Any]]:
    with gateway.open_read(path) as stream:
        return patches.instructions_from_package(stream, path.rsplit("/", 1)[-1])
