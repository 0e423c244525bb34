"""Air-gap bundles: a mirror's changes as volumes of files plus a signed manifest.

The inside can never tell the outside what it has, so bundles form a chain: each
names the bundle it follows, and import refuses a gap that would lose removals or
hot-fixes. Every byte is verified against the manifest before the target is
touched; the target is then written in sync's publishing order, so a killed import
leaves it consistent and a rerun finishes it.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from conda_ferry.gateways import (
    Expected,
    Gateway,
    GatewayError,
    NotFound,
    RawStream,
    UsageError,
    VerifyingReader,
    clean_relative,
    copy_stream,
    matches,
    open_gateway,
)
from conda_ferry.index import repodata
from conda_ferry.index.channel import IndexOptions, published_subdirs
from conda_ferry.index.publish import OutputOptions
from conda_ferry.index.records import (
    BadFilename,
    check_filename,
    is_subdir_name,
    record_problem,
)
from conda_ferry.index.subdir import SubdirView

from . import signing, snapshots, snapstore
from .channelpage import write_channel_page
from .commit import Commit, Committing, choose_records
from .errors import USAGE, FerryError
from .indexing import ensure_noarch
from .plan import same_file
from .snapstore import subdir_path
from .state import STATE_DIR, SubdirState, subdir_locks, sweep_temps

log = logging.getLogger("ferry.bundle")
FORMAT = "conda-ferry-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
EXPORTS = f"{STATE_DIR}/exports.json"
IMPORTS = f"{STATE_DIR}/imports.json"
KEEP_EXPORTS = 10
_VOLUME = re.compile(r"^vol-\d{4}$")
_ID = re.compile(r"^[0-9A-Za-z-]{8,64}$")
_CREATED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")  # sorts as it ages


@dataclass
class Piece:
    volume: str
    path: str
    size: int
    sha256: str


@dataclass
class BundleFile:
    path: str  # subdir/filename
    size: int
    sha256: str
    pieces: list[Piece] = field(default_factory=list)


@dataclass
class CarriedSnapshot:
    """A snapshot of the outside, recreated inside under the same name."""

    name: str
    created: str
    by: str
    index: dict[str, BundleFile]  # subdir -> the snapshot's repodata.json in the bundle


@dataclass
class Manifest:
    id: str
    follows: str | None
    full: bool
    created: str
    source: str
    subdirs: list[str]
    files: list[BundleFile]
    removals: dict[str, list[str]]
    snapshots: list[CarriedSnapshot] = field(default_factory=list)
    format: str = FORMAT

    def every_file(self) -> list[BundleFile]:
        return [*self.files, *(f for s in self.snapshots for f in s.index.values())]

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        """A manifest whose every name is checked: nothing in it may climb out."""

        def bad(problem: str) -> FerryError:
            return FerryError(f"{where}: {problem} (refused; nothing was written)")

        def text(value: Any) -> str:
            if not isinstance(value, str):
                raise TypeError
            return value

        def count(value: Any) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TypeError
            return value

        def read_piece(raw: Any) -> Piece:
            return Piece(
                text(raw["volume"]), text(raw["path"]), count(raw["size"]), text(raw["sha256"])
            )

        def read_file(f: Any) -> BundleFile:
            pieces = [read_piece(p) for p in f["pieces"]]
            return BundleFile(text(f["path"]), count(f["size"]), text(f["sha256"]), pieces)

        def read_snapshot(raw: Any) -> CarriedSnapshot:
            index = {text(k): read_file(f) for k, f in raw["index"].items()}
            return CarriedSnapshot(text(raw["name"]), text(raw["created"]), text(raw["by"]), index)

        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise bad(f"unknown bundle format {str(raw.get('format'))[:40]!r}")
            files = [read_file(f) for f in raw["files"]]
            manifest = cls(
                text(raw["id"]),
                None if raw["follows"] is None else text(raw["follows"]),
                bool(raw["full"]),
                text(raw["created"]),
                text(raw["source"]),
                [text(s) for s in raw["subdirs"]],
                files,
                {text(k): [text(n) for n in v] for k, v in raw["removals"].items()},
                [read_snapshot(r) for r in raw.get("snapshots", [])],  # older bundles: none
            )
        except FerryError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError):
            raise bad("the manifest is malformed") from None
        if not _ID.match(manifest.id) or (manifest.follows and not _ID.match(manifest.follows)):
            raise bad("bundle ids are malformed")
        if not _CREATED.match(manifest.created):
            raise bad(f"'created' {manifest.created[:40]!r} is not a UTC time")
        for subdir in manifest.subdirs:
            if not is_subdir_name(subdir):
                raise bad(f"subdir {subdir!r} is not a subdir name")
        for item in manifest.files:
            _check_member(item.path, manifest.subdirs, bad)
        for snapshot in manifest.snapshots:
            if not snapstore.NAME.fullmatch(snapshot.name) or snapshot.name == snapstore.LIVE:
                raise bad(f"snapshot name {snapshot.name[:100]!r} is unsafe")
            if not _CREATED.match(snapshot.created) or snapshot.by not in ("sync", "manual"):
                raise bad(f"snapshot {snapshot.name} is malformed")
            for subdir, item in snapshot.index.items():
                if subdir not in manifest.subdirs:
                    raise bad(f"snapshot {snapshot.name}: {subdir!r} is not a subdir of the bundle")
                if item.path != subdir_path(snapshot.name, subdir, "repodata.json"):
                    raise bad(f"snapshot path {item.path[:200]!r} is unsafe")
        for item in manifest.every_file():
            for piece in item.pieces:
                if not _VOLUME.match(piece.volume):
                    raise bad(f"volume name {piece.volume!r} is not vol-NNNN")
                if not piece.path.startswith(item.path) or clean_relative(piece.path) != piece.path:
                    raise bad(f"piece path {piece.path!r} is unsafe")
        for subdir, names in manifest.removals.items():
            for name in names:
                _check_member(f"{subdir}/{name}", manifest.subdirs, bad)
        return manifest


def _check_member(path: str, subdirs: list[str], bad: Any) -> None:
    try:
        if clean_relative(path) != path:
            raise ValueError
    except (UsageError, ValueError):
        raise bad(f"path {path!r} leaves the bundle") from None
    subdir, _, name = path.partition("/")
    if subdir not in subdirs:
        raise bad(f"path {path!r} is outside the bundle's subdirs")
    if name == "repodata.json":
        return
    try:
        check_filename(name)
    except BadFilename as exc:
        raise bad(str(exc)) from None


def _new_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


class _Exported(msgspec.Struct):
    """One export, as the history keeps it: ``snapshot``, what each subdir published
    then (file name -> digest), is the next export's baseline."""

    id: str
    snapshot: dict[str, dict[str, str]]
    follows: str | None = None
    full: bool = False
    created: str = ""
    snapshots: list[str] = []  # the snapshots carried so far


class _Exports(msgspec.Struct):
    exports: list[_Exported] = []


def _export_history(mirror: Gateway) -> list[_Exported]:
    """The exports so far; none where the history is missing or damaged (the next
    export is then a full one)."""
    try:
        return msgspec.json.decode(mirror.read_bytes(EXPORTS), type=_Exports).exports
    except NotFound:
        return []
    except msgspec.MsgspecError as exc:
        log.warning("%s: unreadable (%s); this export is a full one", mirror.display(EXPORTS), exc)
        return []


class _Imports(msgspec.Struct):
    imported: list[str] = []  # bundle ids, oldest first
    created: str | None = None  # the newest bundle's creation time


def _import_history(target: Gateway) -> _Imports:
    """The bundles imported so far; none where the history is missing or damaged
    (bundles then need --allow-gap, or a full one)."""
    try:
        return msgspec.json.decode(target.read_bytes(IMPORTS), type=_Imports)
    except NotFound:
        return _Imports()
    except msgspec.MsgspecError as exc:
        log.warning(
            "%s: unreadable (%s); no bundle counts as imported", target.display(IMPORTS), exc
        )
        return _Imports()


# -- export ------------------------------------------------------------------------------
class _Limited(RawStream):
    """At most ``limit`` bytes of ``stream``, hashed on the way: one piece of a file."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        super().__init__()
        self._stream, self._left = stream, limit
        self.sha256 = hashlib.sha256()
        self.count = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self._stream.read(min(size, self._left)) if self._left else b""
        self._left -= len(data)
        self.count += len(data)
        self.sha256.update(data)
        return data


class _Packer:
    """Fills volumes in order; splits a file only when it cannot fit in an empty one."""

    def __init__(self, out: Gateway, volume_size: int) -> None:
        self.out, self.volume_size = out, volume_size
        self.number, self.used = 1, 0

    @property
    def volume(self) -> str:
        return f"vol-{self.number:04d}"

    def add(self, path: str, stream: BinaryIO, size: int) -> list[Piece]:
        if self.used and self.used + size > self.volume_size and size <= self.volume_size:
            self.number, self.used = self.number + 1, 0
        pieces: list[Piece] = []
        left, part = size, 0
        while True:
            room = self.volume_size - self.used
            if room <= 0:
                self.number, self.used = self.number + 1, 0
                room = self.volume_size
            take = min(left, room)
            split = take < size
            name = f"{path}.part-{part:04d}" if split or part else path
            limited = _Limited(stream, take)
            self.out.write_atomic(f"{self.volume}/{name}", limited.as_binary())
            pieces.append(Piece(self.volume, name, limited.count, limited.sha256.hexdigest()))
            self.used += take
            left -= take
            part += 1
            if left <= 0:
                return pieces


def export_bundle(
    mirror: Gateway,
    bundle_dir: str,
    since: str | None,
    full: bool,
    subdirs: list[str] | None,
    volume_size: int,
    sign_key: str | None,
) -> Manifest:
    out_root = Path(bundle_dir)
    try:
        if out_root.exists() and any(out_root.iterdir()):
            raise FerryError(f"{bundle_dir}: not empty (export into a new directory)", 2)
    except OSError as exc:
        raise FerryError(f"{bundle_dir}: {exc.strerror} (export into a new directory)", 2) from None
    exports = _export_history(mirror)
    base: _Exported | None = None
    if since:
        base = next((e for e in exports if e.id == since), None)
        if base is None:
            known = ", ".join(e.id for e in exports[-3:]) or "none"
            raise FerryError(
                f"{mirror.display(EXPORTS)}: no export {since} in the history "
                f"(recent: {known}; or use --full)",
                2,
            )
    elif not full and exports:
        base = exports[-1]
    full = full or base is None
    baseline: dict[str, dict[str, str]] = {} if full or base is None else base.snapshot
    chosen = subdirs or published_subdirs(mirror)
    manifest = Manifest(
        _new_id(),
        base.id if base and not full else (exports[-1].id if exports else None),
        full,
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        mirror.display(),
        sorted(chosen),
        [],
        {},
    )
    snapshot: dict[str, dict[str, str]] = {}
    inside: dict[str, set[str]] = {}  # the files the inside has once this bundle is in
    with open_gateway(str(out_root)) as out, subdir_locks(mirror, chosen):
        packer = _Packer(out, volume_size)
        for subdir in sorted(chosen):
            path = f"{subdir}/repodata.json"
            data = mirror.read_bytes(path)
            records = repodata.records(snapstore.document(mirror, path, data))
            snapshot[subdir] = {
                fn: str(r.get("sha256") or r.get("md5")) for fn, r in records.items()
            }
            before = baseline.get(subdir, {})
            for filename in sorted(records):
                if before.get(filename) == snapshot[subdir][filename]:
                    continue
                manifest.files.append(_pack_package(mirror, packer, subdir, filename, records))
            inside[subdir] = set(before) | set(records)
            digest = hashlib.sha256(data).hexdigest()
            pieces = packer.add(f"{subdir}/repodata.json", io.BytesIO(data), len(data))
            manifest.files.append(BundleFile(f"{subdir}/repodata.json", len(data), digest, pieces))
            gone = sorted(set(before) - set(records))
            if gone:
                manifest.removals[subdir] = gone
        exported = {n for e in exports for n in e.snapshots}
        for held in snapstore.all_snapshots(mirror):
            if held.complete and (full or held.name not in exported):
                _carry_snapshot(mirror, packer, manifest, held, inside)
        body = manifest.to_bytes()
        if sign_key:
            out.write_bytes(SIGNATURE, signing.sign(body, sign_key))
        out.write_bytes(MANIFEST, body)  # last: a bundle without it is incomplete
        exports.append(
            _Exported(
                manifest.id,
                snapshot,
                manifest.follows,
                manifest.full,
                manifest.created,
                sorted(exported | {s.name for s in manifest.snapshots}),
            )
        )
        sweep_temps(mirror, STATE_DIR, ".exports.json.")
        mirror.write_bytes(EXPORTS, msgspec.json.encode(_Exports(exports[-KEEP_EXPORTS:])))
    return manifest


def _pack_package(
    mirror: Gateway, packer: _Packer, subdir: str, filename: str, records: dict[str, Any]
) -> BundleFile:
    """One package into the volumes, verified against its record as it streams."""
    record = records[filename]
    path = f"{subdir}/{filename}"
    source = VerifyingReader(
        mirror.open_read(path), mirror.display(path), int(record["size"]), record.get("sha256")
    )
    with source:
        pieces = packer.add(path, source.as_binary(), int(record["size"]))
    return BundleFile(path, source.count, source.sha256.hexdigest(), pieces)


def _carry_snapshot(
    mirror: Gateway,
    packer: _Packer,
    manifest: Manifest,
    held: snapstore.Snapshot,
    inside: dict[str, set[str]],
) -> None:
    """A snapshot's index of the exported subdirs, and the package files it names
    that the inside will not have (pruned outside since the last export)."""
    carried = CarriedSnapshot(held.name, held.created, held.by, {})
    for subdir in sorted(held.subdirs.keys() & inside.keys()):
        path = subdir_path(held.name, subdir, "repodata.json")
        data = mirror.read_bytes(path)
        records = repodata.records(snapstore.document(mirror, path, data))
        for filename in sorted(records.keys() - inside[subdir]):
            manifest.files.append(_pack_package(mirror, packer, subdir, filename, records))
            inside[subdir].add(filename)
        pieces = packer.add(path, io.BytesIO(data), len(data))
        digest = hashlib.sha256(data).hexdigest()
        carried.index[subdir] = BundleFile(path, len(data), digest, pieces)
    if carried.index:
        manifest.snapshots.append(carried)


# -- reading and checking a bundle -------------------------------------------------------
def read_manifest(bundle: Gateway, verify_key: str | None) -> tuple[Manifest, bool]:
    """The manifest, its signature checked when a key is given; and whether it is signed."""
    try:
        body = bundle.read_bytes(MANIFEST)
    except NotFound:
        if not bundle.exists(""):
            raise FerryError(
                f"{bundle.display()}: no such directory (give the directory an export wrote)",
                USAGE,
            ) from None
        raise FerryError(
            f"{bundle.display(MANIFEST)}: no manifest (an incomplete or wrong bundle directory)"
        ) from None
    try:
        signature: bytes | None = bundle.read_bytes(SIGNATURE)
    except NotFound:
        signature = None
    if verify_key:
        signing.verify(body, signature, verify_key, bundle.display(MANIFEST))
    return Manifest.parse(body, bundle.display(MANIFEST)), signature is not None


def check_volumes(bundle: Gateway, manifest: Manifest) -> None:
    """Every piece present with its size and sha256, or one line naming what is not."""
    missing_volumes = sorted(
        {p.volume for f in manifest.every_file() for p in f.pieces if not bundle.exists(p.volume)}
    )
    if missing_volumes:
        raise FerryError(
            f"{bundle.display()}: volume(s) {', '.join(missing_volumes)} missing "
            "(copy every volume of the bundle; nothing was applied)"
        )
    for item in manifest.every_file():
        for piece in item.pieces:
            where = f"{piece.volume}/{piece.path}"
            try:
                size, sha = bundle.checksum(where)
            except NotFound:
                raise FerryError(
                    f"{bundle.display(where)}: missing (the volume is incomplete; "
                    "nothing was applied)"
                ) from None
            if size != piece.size or sha != piece.sha256:
                raise FerryError(
                    f"{bundle.display(where)}: corrupt, size or sha256 differs "
                    "from the manifest (copy the volume again; nothing was applied)"
                )


class _Joined(RawStream):
    """The pieces of one file, read one after another."""

    def __init__(self, bundle: Gateway, pieces: list[Piece]) -> None:
        super().__init__()
        self._streams: Iterator[BinaryIO] = (
            bundle.open_read(f"{p.volume}/{p.path}") for p in pieces
        )
        self._current: BinaryIO | None = next(self._streams, None)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while self._current is not None:
            data = self._current.read(size)
            if data:
                return data
            self._current.close()
            self._current = next(self._streams, None)
        return b""


def _join(bundle: Gateway, pieces: list[Piece]) -> BinaryIO:
    return _Joined(bundle, pieces).as_binary()


# -- import ------------------------------------------------------------------------------
class ImportStatus(str, enum.Enum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already applied"

    def __str__(self) -> str:
        return self.value


@dataclass
class ImportReport:
    id: str
    status: ImportStatus
    packages: int = 0
    bytes: int = 0
    removed: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # subdir/file -> why
    snapshots: list[str] = field(default_factory=list)  # recreated inside


def import_bundle(
    bundle: Gateway,
    target: Gateway,
    verify_key: str | None,
    allow_gap: bool,
    allow_rollback: bool = False,
) -> ImportReport:
    manifest, _ = read_manifest(bundle, verify_key)
    history = _import_history(target)
    imported, newest = history.imported, history.created
    if manifest.id in imported:  # a run killed after recording it may not have finished
        _finish_import(target)
        return ImportReport(manifest.id, ImportStatus.ALREADY_APPLIED)
    if newest is not None and manifest.created < newest and not allow_rollback:
        raise FerryError(
            f"{bundle.display(MANIFEST)}: bundle {manifest.id} was created {manifest.created}, "
            f"before the last one imported into {target.display()} ({newest}): a replay "
            "would roll the mirror back (refused; --allow-rollback if that is what you want)"
        )
    last = imported[-1] if imported else None
    if not manifest.full and manifest.follows != last and not allow_gap:
        raise FerryError(
            f"{bundle.display(MANIFEST)}: bundle {manifest.id} follows "
            f"{manifest.follows or 'nothing'}, but the last bundle imported into "
            f"{target.display()} is {last or 'none'} (import the bundles in order, start from a "
            "--full export, or --allow-gap to accept lost removals and hot-fixes)"
        )
    check_volumes(bundle, manifest)
    by_subdir: dict[str, list[BundleFile]] = {}
    for item in manifest.files:
        by_subdir.setdefault(item.path.split("/", 1)[0], []).append(item)
    records = {s: _bundle_records(bundle, s, by_subdir.get(s, [])) for s in manifest.subdirs}
    held = _carried_snapshots(bundle, target, manifest, by_subdir)
    made: dict[str, dict[str, dict[str, Any]]] = {}  # snapshot -> subdir -> its figures
    report = ImportReport(manifest.id, ImportStatus.APPLIED)
    with subdir_locks(target, manifest.subdirs):
        for subdir in manifest.subdirs:
            _apply_subdir(
                bundle,
                target,
                subdir,
                by_subdir.get(subdir, []),
                records[subdir],
                manifest.removals.get(subdir, []),
                held.get(subdir, []),
                made,
                allow_gap,
                report,
            )
        for carried in manifest.snapshots:  # complete once every subdir is in
            figures = made.get(carried.name, {})
            if figures.keys() == carried.index.keys():
                meta = snapstore.Snapshot(carried.name, carried.created, carried.by, figures)
                snapshots.write_meta(target, meta)
                report.snapshots.append(carried.name)
        imported.append(manifest.id)
        created = max(manifest.created, newest or "")
        sweep_temps(target, STATE_DIR, ".imports.json.")
        target.write_bytes(IMPORTS, msgspec.json.encode(_Imports(imported[-1000:], created)))
    _finish_import(target)
    return report


def _finish_import(target: Gateway) -> None:
    """What follows the record of an import; idempotent, so a run repeated after a
    kill completes it (and sweeps the front page's temp the kill left)."""
    ensure_noarch(target, OutputOptions())
    write_channel_page(target, OutputOptions().html)


def _bundle_records(
    bundle: Gateway, subdir: str, items: list[BundleFile]
) -> dict[str, dict[str, Any]]:
    """A subdir's repodata from the bundle, checked record against file before anything
    is written: signed or not, a bundle's repodata may not describe other bytes than
    the files it carries."""
    index_file = next((i for i in items if i.path.endswith("/repodata.json")), None)
    where = bundle.display(f"{subdir}/repodata.json")
    if index_file is None:
        raise FerryError(f"{bundle.display()}: no repodata for {subdir} in the bundle")
    try:
        with _Joined(bundle, index_file.pieces) as stream:
            document = repodata.loads(stream.read())
    except ValueError as exc:
        raise FerryError(f"{where}: not repodata ({exc}); refused, nothing was written") from None
    records = repodata.records(document)
    _check_records(where, records, [i for i in items if i is not index_file])
    return records


def _check_records(where: str, records: dict[str, dict[str, Any]], items: list[BundleFile]) -> None:
    files = {i.path.split("/", 1)[1]: i for i in items}
    for name, record in records.items():
        problem = record_problem(record) or _checked_name(name)
        item = files.get(name)
        if (
            problem is None
            and item is not None
            and (record["size"], record.get("sha256") or item.sha256) != (item.size, item.sha256)
        ):
            problem = "its size or sha256 is not the file's in the bundle"
        if problem:
            raise FerryError(
                f"{where}: the record of {name} is refused: {problem} "
                "(a damaged or tampered bundle; nothing was written)"
            )


Held = list[tuple[str, bytes, dict[str, Any]]]  # (snapshot, its repodata.json, read)


def _carried_snapshots(
    bundle: Gateway, target: Gateway, manifest: Manifest, by_subdir: dict[str, list[BundleFile]]
) -> dict[str, Held]:
    """The snapshots the bundle carries that the target lacks, per subdir, each
    record checked against the bundle's files before anything is written."""
    out: dict[str, Held] = {}
    for carried in manifest.snapshots:
        existing = snapstore.load(target, carried.name)
        if existing is not None and existing.complete:
            log.info("%s: snapshot %s is there already", target.display(), carried.name)
            continue
        for subdir, item in sorted(carried.index.items()):
            where = bundle.display(item.path)
            try:
                with _Joined(bundle, item.pieces) as stream:
                    data = stream.read()
                document = repodata.loads(data)
            except ValueError as exc:
                raise FerryError(
                    f"{where}: not repodata ({exc}); refused, nothing was written"
                ) from None
            _check_records(where, repodata.records(document), by_subdir.get(subdir, []))
            out.setdefault(subdir, []).append((carried.name, data, document))
    return out


def _checked_name(name: str) -> str | None:
    try:
        check_filename(name)
    except BadFilename as exc:
        return str(exc)
    return None


def _apply_subdir(
    bundle: Gateway,
    target: Gateway,
    subdir: str,
    items: list[BundleFile],
    records: dict[str, dict[str, Any]],
    removals: list[str],
    held: Held,
    made: dict[str, dict[str, dict[str, Any]]],
    allow_gap: bool,
    report: ImportReport,
) -> None:
    view = SubdirView.read(target, subdir)
    present = view.present
    packages = [i for i in items if not i.path.endswith("/repodata.json")]
    arriving = {i.path.split("/", 1)[1] for i in packages}
    missing = sorted(set(records) - arriving - present.keys())
    if missing and not allow_gap:
        raise FerryError(
            f"{target.display(subdir)}: {len(missing)} package(s) the bundle's "
            f"repodata lists are neither in the bundle nor in the target, e.g. "
            f"{missing[0]} (import the earlier bundles, or a --full export)"
        )
    for name in missing:
        log.warning(
            "%s: not in the target nor the bundle; left out (--allow-gap)",
            target.display(f"{subdir}/{name}"),
        )

    ready: set[str] = set()
    for item in packages:  # packages first
        name = item.path.split("/", 1)[1]
        record = records.get(name, {})
        if _already_there(target, item, name, present, view.published):
            ready.add(name)
            continue
        copied = copy_stream(
            functools.partial(_join, bundle, item.pieces),
            bundle.display(item.path),
            target,
            item.path,
            Expected(item.size, item.sha256, record.get("md5")),
        )
        view.landed(copied.info)
        ready.add(name)
        report.packages += 1
        report.bytes += item.size
    # Files of earlier imports: the bundle's record must still describe them.
    for name in sorted(records.keys() & view.packages.keys() - ready):
        if _present(target, view, subdir, name, records[name]):
            ready.add(name)
        else:
            why = "the bundle's record does not match the file the target holds"
            log.error("%s: not published: %s", target.display(f"{subdir}/{name}"), why)
            report.refused[f"{subdir}/{name}"] = why
    for name, data, document in held:  # their files are all here now
        lacking = [
            f
            for f, record in sorted(repodata.records(document).items())
            if f not in arriving and not _present(target, view, subdir, f, record)
        ]
        if lacking:
            if not allow_gap:
                raise FerryError(
                    f"{target.display(f'{subdir}/{lacking[0]}')}: snapshot {name} names it, but "
                    "neither the bundle nor the target has it (import the earlier bundles, or a "
                    "--full export)"
                )
            log.warning("snapshot %s: %s lacks %s; not recreated", name, subdir, lacking[0])
            continue
        figures = snapshots.write_subdir(target, name, subdir, data, document)  # counted here
        made.setdefault(name, {})[subdir] = figures
    known = choose_records(records, ready, view.published, view.packages)
    only_held = arriving - records.keys()  # pruned outside, carried for a snapshot
    state = SubdirState.load(target, subdir)
    managed = set(state.upstream_files) | set(known) | only_held
    state.upstream_files, state.complete = sorted(managed), True
    state.save(target)  # before publishing: these files are the mirror's, not custom ones
    gone = [name for name in removals if name not in records]
    Committing(
        target,
        view,
        Commit(known, managed | set(removals), [*gone, *sorted(only_held)]),
        state,
        IndexOptions(channeldata=False, run_exports=False),
    ).finish()
    report.removed += len(gone)


def _present(
    target: Gateway, view: SubdirView, subdir: str, filename: str, record: dict[str, Any]
) -> bool:
    """A file of an earlier import that ``record`` describes: known from the
    published record, else re-hashed."""
    if filename not in view.packages:
        return False
    expect = Expected(record.get("size"), record.get("sha256"), record.get("md5"))
    return same_file(view.published.get(filename), record) or matches(
        target, f"{subdir}/{filename}", expect
    )


def _already_there(
    target: Gateway, item: BundleFile, name: str, present: dict[str, int], published: dict[str, Any]
) -> bool:
    """A rerun skips files already written: known from the records, else re-hashed."""
    if present.get(name) != item.size:
        return False
    if (published.get(name) or {}).get("sha256") == item.sha256:
        return True
    try:
        return target.checksum(item.path) == (item.size, item.sha256)
    except GatewayError:
        return False


def describe(manifest: Manifest, signed: bool) -> list[str]:
    lines = [
        f"bundle {manifest.id} ({'full' if manifest.full else 'changes'}), follows "
        f"{manifest.follows or 'nothing'}",
        f"created {manifest.created} from {manifest.source}; {'signed' if signed else 'unsigned'}",
    ]
    volumes: dict[str, int] = {}
    for item in manifest.every_file():
        for piece in item.pieces:
            volumes[piece.volume] = volumes.get(piece.volume, 0) + piece.size
    for subdir in manifest.subdirs:
        packages = [
            f
            for f in manifest.files
            if f.path.startswith(f"{subdir}/") and not f.path.endswith("/repodata.json")
        ]
        lines.append(
            f"  {subdir:14} {len(packages):6} packages {sum(f.size for f in packages):>14,}"
            f" bytes, {len(manifest.removals.get(subdir, [])):5} removals"
        )
    for carried in manifest.snapshots:
        lines.append(f"  snapshot {carried.name} of {', '.join(sorted(carried.index))}")
    lines.append(
        f"  {len(volumes)} volume(s): "
        + ", ".join(f"{v} {size:,} bytes" for v, size in sorted(volumes.items()))
    )
    return lines
