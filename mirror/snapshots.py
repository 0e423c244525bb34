"""Snapshots: the published index of a mirror as it was, servable as a channel.

A snapshot is index files only (CEP 15): ``snapshots/NAME/<subdir>/repodata.json``
whose ``info.base_url`` leads back to the live subdir, so its packages are the
mirror's own files and a snapshot costs kilobytes to megabytes, never a copy of a
package. That makes the live channel's deletions the one thing to guard: a file a
snapshot names is never deleted (``commit.expire`` asks ``snapstore.held``).

Order, so that a kill at any instant leaves every index naming present files:
create writes a subdir's ``repodata.json`` first (from then on it holds its
files), then its shards, shard index and ``.zst``, and ``snapshot.json`` last;
delete goes the other way round, and restarts the grace of the files it held
before it lets go of them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from conda_ferry.gateways import Gateway
from conda_ferry.index import repodata, shards
from conda_ferry.index.channel import IndexOptions, discover_subdirs, published_subdirs
from conda_ferry.index.publish import OUTPUT_FILES, OutputOptions
from conda_ferry.index.subdir import SubdirView

from . import snapstore
from .commit import DEFAULT_GRACE, Commit, Committing
from .errors import USAGE, FerryError
from .snapstore import SNAPSHOTS_DIR, Snapshot, subdir_path
from .state import SubdirState, subdir_locks, sweep_temps
from .units import utc
from .upstream import Descriptions


def default_name() -> str:
    """The UTC date-time: names sort as they age and say when."""
    return time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())


def _published(gateway: Gateway, subdirs: Iterable[str] | None) -> list[str]:
    """The subdirs a snapshot takes: those asked for, and noarch, which every client
    reads alongside a platform."""
    live = published_subdirs(gateway)
    if not subdirs:
        return live
    chosen = set(subdirs) | ({"noarch"} & set(live))
    for subdir in sorted(chosen - set(live)):
        raise FerryError(
            f"{gateway.display(subdir)}: publishes no repodata.json (sync or index it first)",
            USAGE,
        )
    return sorted(chosen)


def _lock(gateway: Gateway) -> Any:
    return gateway.lock(snapstore.LOCK)


def create(
    gateway: Gateway, name: str, subdirs: Iterable[str] | None = None, by: str = "manual"
) -> Snapshot:
    snapstore.check_name(name)
    chosen = _published(gateway, subdirs)
    if not chosen:
        raise FerryError(f"{gateway.display()}: no subdir publishes repodata yet", USAGE)
    with subdir_locks(gateway, chosen), _lock(gateway):
        existing = snapstore.load(gateway, name)
        if existing is not None and existing.complete:
            raise FerryError(
                f"{gateway.display(f'{SNAPSHOTS_DIR}/{name}')}: snapshot {name} exists and is "
                "immutable (choose another name)",
                USAGE,
            )
        snapshot = Snapshot(name, utc(time.time()), by)
        for subdir in chosen:
            path = f"{subdir}/repodata.json"
            live = gateway.read_bytes(path)
            document = snapstore.document(gateway, path, live)
            snapshot.subdirs[subdir] = write_subdir(gateway, name, subdir, live, document)
        write_meta(gateway, snapshot)
    return snapshot


def write_subdir(
    gateway: Gateway, name: str, subdir: str, live: bytes, document: dict[str, Any]
) -> dict[str, Any]:
    """A snapshot's index of ``subdir`` made from ``live``, the repodata.json it
    preserves, read as ``document``; returns the snapshot's figures of it."""
    document["info"] = {
        **(document.get("info") or {}),
        "subdir": subdir,
        "base_url": f"../../../{subdir}/",  # from snapshots/NAME/<subdir>/ to the live files
    }
    document["repodata_version"] = 2  # CEP 15: a base_url is version 2
    data = repodata.dumps(document)
    _sweep(gateway, name, subdir)  # what a killed writer of this index left
    gateway.write_bytes(subdir_path(name, subdir, "repodata.json"), data)  # holds the files
    if gateway.exists(f"{subdir}/{shards.INDEX_NAME}"):
        index_bytes, shard_files, _ = shards.build(document)
        for digest, blob in shard_files.items():
            path = subdir_path(name, subdir, shards.shard_path(digest))
            gateway.write_bytes(path, blob, durable=False)
        gateway.flush()
        gateway.write_bytes(subdir_path(name, subdir, shards.INDEX_NAME), index_bytes)
    gateway.write_bytes(subdir_path(name, subdir, "repodata.json.zst"), repodata.zst(data))
    records = repodata.records(document)
    return {
        "records": len(records),
        "packages": len({r.get("name") for r in records.values()}),
        "bytes": sum(int(r.get("size") or 0) for r in records.values()),
        "repodata_sha256": hashlib.sha256(live).hexdigest(),
    }


def write_meta(gateway: Gateway, snapshot: Snapshot) -> None:
    """``snapshot.json``, last: from now on the snapshot is complete."""
    sweep_temps(gateway, f"{SNAPSHOTS_DIR}/{snapshot.name}", "")  # a killed writer's
    gateway.write_bytes(snapstore.meta_path(snapshot.name), snapshot.to_bytes())


def _sweep(gateway: Gateway, name: str, subdir: str) -> None:
    """Temp files of a killed create, import or delete (the caller holds the lock)."""
    for directory in (subdir_path(name, subdir), subdir_path(name, subdir, shards.SHARDS_DIR)):
        sweep_temps(gateway, directory, "")


def get(gateway: Gateway, name: str) -> Snapshot:
    snapshot = snapstore.load(gateway, snapstore.check_name(name))
    if snapshot is None:
        known = ", ".join(s.name for s in snapstore.all_snapshots(gateway)[-3:]) or "none"
        raise FerryError(
            f"{gateway.display(f'{SNAPSHOTS_DIR}/{name}')}: no such snapshot "
            f"(recent: {known}; 'ferry snapshot list' shows them all)",
            USAGE,
        )
    return snapshot


def delete(gateway: Gateway, name: str, grace: float = DEFAULT_GRACE) -> Snapshot:
    """Remove a snapshot's index; the files only it named become due after ``grace``."""
    snapshot = get(gateway, name)
    if name in snapstore.pinned(gateway):
        raise FerryError(
            f"snapshot {name} is pinned (to delete it, unpin it first: "
            f"ferry snapshot unpin {gateway.display()} {name})",
            USAGE,
        )
    with subdir_locks(gateway, snapshot.subdirs), _lock(gateway):
        gateway.delete(snapstore.meta_path(name))  # listed no more
        sweep_temps(gateway, f"{SNAPSHOTS_DIR}/{name}", "")
        for subdir in sorted(snapshot.subdirs):
            _delete_subdir(gateway, name, subdir, grace)
    return snapshot


def _delete_subdir(gateway: Gateway, name: str, subdir: str, grace: float) -> None:
    _sweep(gateway, name, subdir)
    for index in ("repodata.json.zst", shards.INDEX_NAME):
        gateway.delete(subdir_path(name, subdir, index))
    for info in gateway.files(subdir_path(name, subdir, shards.SHARDS_DIR)):
        gateway.delete(info.path)
    try:
        held = snapstore.records(gateway, name, subdir) or {}
    except FerryError:  # unreadable: its files keep the due times they have
        held = {}
    state = SubdirState.load(gateway, subdir)
    until = time.time() + grace  # clients may still hold this snapshot's index
    for filename in held.keys() & state.due.keys():
        state.due[filename] = max(state.due[filename], until)
    state.save(gateway)
    gateway.delete(subdir_path(name, subdir, "repodata.json"))  # last: it held the files


def set_pin(gateway: Gateway, name: str, pin: bool) -> None:
    get(gateway, name)
    with _lock(gateway):
        pins = snapstore.pinned(gateway)
        snapstore.save_pins(gateway, pins | {name} if pin else pins - {name})


class Restored(msgspec.Struct):
    subdir: str
    records: int
    before: int


def restore(
    gateway: Gateway, name: str, subdirs: Iterable[str] | None = None, hold: bool = False
) -> list[Restored]:
    """Republish the live channel from a snapshot, through the one commit path (so
    JLAP clients follow it like any update); the next sync moves forward again
    unless ``hold``."""
    snapshot = get(gateway, name)
    if not snapshot.complete:
        raise FerryError(f"snapshot {name} is incomplete (delete it)", USAGE)
    chosen = sorted(subdirs or snapshot.subdirs)
    for subdir in chosen:
        if subdir not in snapshot.subdirs:
            raise FerryError(
                f"snapshot {name} has no {subdir} (it has {', '.join(sorted(snapshot.subdirs))})",
                USAGE,
            )
    done: list[Restored] = []
    descriptions = Descriptions(gateway)
    with subdir_locks(gateway, chosen):
        for subdir in chosen:
            records = snapstore.records(gateway, name, subdir) or {}
            view = SubdirView.read(gateway, subdir)
            _check_files(gateway, subdir, records, view)
            state = SubdirState.load(gateway, subdir)
            managed = set(state.upstream_files)
            commit = Commit(
                records,
                managed,
                remove=sorted(managed & view.packages.keys() - records.keys()),
                extras=descriptions.extras(subdir, records),
                hidden=view.packages.keys() - records.keys() - managed,  # custom: kept
            )
            # upstream unchanged must not leave the channel rolled back: fetch anew
            state.etag = state.last_modified = state.variant = state.fingerprint = None
            state.complete = False
            now = utc(time.time())
            state.last_run = {"started": now, "finished": now, "result": f"restored {name}"}
            if hold:
                state.hold = {"snapshot": name, "since": now}
            Committing(gateway, view, commit, state, _options(view)).finish()
            done.append(Restored(subdir, len(records), len(view.published)))
    return done


def _options(view: SubdirView) -> IndexOptions:
    """The outputs the subdir publishes now, kept as they are."""
    kept = {key: name in view.names for key, name in OUTPUT_FILES.items()}
    outputs = OutputOptions(**kept, html="index.html" in view.names)
    return IndexOptions(channeldata=False, run_exports=False, outputs=outputs)


def _check_files(
    gateway: Gateway, subdir: str, records: dict[str, dict[str, Any]], view: SubdirView
) -> None:
    """Every file the snapshot names is present and still the one it described."""
    for filename, record in sorted(records.items()):
        info = view.packages.get(filename)
        live = view.published.get(filename)
        if (
            info is None
            or info.size != record.get("size")
            or (live is not None and live.get("sha256") != record.get("sha256"))
        ):
            raise FerryError(
                f"{gateway.display(f'{subdir}/{filename}')}: "
                + ("missing" if info is None else "not the file the snapshot describes")
                + " (nothing was restored; 'ferry verify' checks every snapshot)"
            )


def release(gateway: Gateway, subdirs: Iterable[str] | None = None) -> list[str]:
    """Lift the holds that ``restore --hold`` put on subdirs; returns those lifted."""
    chosen = sorted(subdirs or discover_subdirs(gateway))
    released = []
    with subdir_locks(gateway, chosen):
        for subdir in chosen:
            state = SubdirState.load(gateway, subdir)
            if state.hold:
                state.hold = {}
                state.save(gateway)
                released.append(subdir)
    return released


def diff(gateway: Gateway, a: str, b: str) -> dict[str, dict[str, list[str]]]:
    """Per subdir, by file name: added in ``b``, removed from ``a``, record changed.
    Either side may be ``live``."""
    sides = [_side(gateway, n) for n in (a, b)]
    out: dict[str, dict[str, list[str]]] = {}
    for subdir in sorted(set(sides[0]) | set(sides[1])):
        old = snapstore.records(gateway, a, subdir) or {}
        new = snapstore.records(gateway, b, subdir) or {}
        changes = {
            "added": sorted(new.keys() - old.keys()),
            "removed": sorted(old.keys() - new.keys()),
            "changed": sorted(f for f in old.keys() & new.keys() if old[f] != new[f]),
        }
        if any(changes.values()):
            out[subdir] = changes
    return out


def _side(gateway: Gateway, name: str) -> list[str]:
    return _published(gateway, None) if name == snapstore.LIVE else list(get(gateway, name).subdirs)


def after_sync(gateway: Gateway, subdirs: list[str], keep: int, grace: float) -> list[str]:
    """The snapshot a job takes after a successful sync (none when nothing changed
    since its last one), then its oldest beyond ``keep`` deleted, pinned ones never.
    Returns what it created and deleted, as lines."""
    lines = []
    ours = [s for s in snapstore.all_snapshots(gateway) if s.complete and s.by == "sync"]
    newest = ours[-1] if ours else None
    # streamed: a conda-forge subdir's repodata.json need not sit in memory for this
    now = {s: gateway.checksum(f"{s}/repodata.json")[1] for s in _published(gateway, subdirs)}
    if newest is None or {s: f.get("repodata_sha256") for s, f in newest.subdirs.items()} != now:
        ours.append(create(gateway, _free_name(gateway, default_name()), subdirs, by="sync"))
        lines.append(f"snapshot {ours[-1].name} created")
    pins = snapstore.pinned(gateway)
    for old in ours[: max(0, len(ours) - keep)]:
        if old.name not in pins:
            delete(gateway, old.name, grace)
            lines.append(f"snapshot {old.name} deleted (keep: {keep})")
    return lines


def _free_name(gateway: Gateway, name: str) -> str:
    """``name``, or ``name-N`` when two runs take one in the same second."""
    taken = set(snapstore.names(gateway))
    candidates = (name, *(f"{name}-{n}" for n in range(1, len(taken) + 2)))
    return next(c for c in candidates if c not in taken)
