"""Where snapshots live on a target and what they hold.

Apart from the snapshot commands, one reader needs this: the deletion step every
writer ends with (``commit.expire``), which must never delete a package file that
a snapshot's index still names. It asks the snapshots' own ``repodata.json`` files,
complete or not: a snapshot whose creation was killed half-way is already served,
so what it names is held as well.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from conda_ferry.gateways import Gateway, NotFound
from conda_ferry.index import repodata
from conda_ferry.index.records import is_subdir_name

from .errors import FerryError
from .state import STATE_DIR

SNAPSHOTS_DIR = "snapshots"
META = "snapshot.json"  # written last by create, deleted first by delete
PINS = f"{STATE_DIR}/pins.json"
LOCK = f"{STATE_DIR}/snapshots.lock"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
LIVE = "live"  # what diff calls the channel as it is now


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name == LIVE:
        raise FerryError(
            f"{name[:100]!r} is not a snapshot name (letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit; not '{LIVE}')",
            2,
        )
    return name


def meta_path(name: str) -> str:
    return f"{SNAPSHOTS_DIR}/{name}/{META}"


def subdir_path(name: str, subdir: str, file: str = "") -> str:
    return f"{SNAPSHOTS_DIR}/{name}/{subdir}" + (f"/{file}" if file else "")


class Snapshot(msgspec.Struct):
    name: str
    created: str = ""
    by: str = "manual"  # "sync" when a job took it; only those are retired by `keep`
    subdirs: dict[str, dict[str, Any]] = {}  # subdir -> figures
    complete: bool = True  # False: a killed create or delete left it; delete it

    def to_bytes(self) -> bytes:
        fields = {"name": self.name, "created": self.created, "by": self.by}
        return json.dumps({**fields, "subdirs": self.subdirs}, indent=1, sort_keys=True).encode()


def names(gateway: Gateway) -> list[str]:
    """Every snapshot directory on the target, complete or not, by name."""
    try:
        entries = gateway.list(SNAPSHOTS_DIR)
    except NotFound:
        return []
    return sorted(e.name for e in entries if e.is_dir and NAME.fullmatch(e.name))


class _Meta(msgspec.Struct):
    """snapshot.json as read back: each field checked (a file on a target may have been
    damaged since it was written)."""

    created: str
    subdirs: dict[str, dict[str, int | str]]
    by: str = "manual"


_meta = msgspec.json.Decoder(_Meta)


def load(gateway: Gateway, name: str) -> Snapshot | None:
    """The snapshot called ``name``, or None when no file of it is left (a deleted
    snapshot may leave empty directories behind)."""
    try:
        meta = _meta.decode(gateway.read_bytes(meta_path(name)))
        if all(is_subdir_name(s) for s in meta.subdirs):
            return Snapshot(name, meta.created, meta.by, dict(meta.subdirs))
    except NotFound:
        pass
    except msgspec.MsgspecError:
        pass  # unreadable: as good as incomplete
    left: dict[str, dict[str, Any]] = {
        f.path.split("/")[2]: {}
        for f in _walk(gateway, f"{SNAPSHOTS_DIR}/{name}")
        if not f.is_dir and f.path.count("/") > 2
    }
    return Snapshot(name, subdirs=left, complete=False) if left else None


def _walk(gateway: Gateway, path: str) -> list[Any]:
    try:
        return gateway.list(path, recursive=True)
    except NotFound:
        return []


def all_snapshots(gateway: Gateway) -> list[Snapshot]:
    """Oldest first (complete ones by creation time, then leftovers by name)."""
    found = [s for s in (load(gateway, n) for n in names(gateway)) if s is not None]
    return sorted(found, key=lambda s: (not s.complete, s.created, s.name))


def records(gateway: Gateway, name: str, subdir: str) -> dict[str, dict[str, Any]] | None:
    """The records a snapshot holds for ``subdir`` (``name`` ``live``: the channel's);
    None when it has none."""
    path = f"{subdir}/repodata.json" if name == LIVE else subdir_path(name, subdir, "repodata.json")
    try:
        data = gateway.read_bytes(path)
    except NotFound:
        return None
    return repodata.records(document(gateway, path, data))


def document(gateway: Gateway, path: str, data: bytes) -> dict[str, Any]:
    """``data``, the repodata.json at ``path`` (live or a snapshot's), as a document;
    damaged, it is a :class:`FerryError` that says how to mend it."""
    try:
        return repodata.loads(data)
    except ValueError as exc:
        mend = (
            "files it may name are kept (repair or delete the snapshot)"
            if path.startswith(f"{SNAPSHOTS_DIR}/")
            else "a sync with --verify, or ferry index, writes it anew"
        )
        raise FerryError(
            f"{gateway.display(path)}: not a repodata document ({exc}); {mend}"
        ) from None


def held(gateway: Gateway, subdir: str, among: set[str]) -> set[str]:
    """Which of ``among`` (files of ``subdir``) some snapshot names: never deleted.

    Newest names first, stopping once all are found: a file just pruned is named by
    the latest snapshot, so most nights read one index, not every one kept."""
    found: set[str] = set()
    for name in reversed(names(gateway)):
        if found == among:
            break
        found |= among & (records(gateway, name, subdir) or {}).keys()
    return found


def pinned(gateway: Gateway) -> set[str]:
    try:
        raw = json.loads(gateway.read_bytes(PINS))
    except (NotFound, ValueError):
        return set()
    listed = raw.get("pinned") if isinstance(raw, dict) else None
    return {n for n in listed if isinstance(n, str)} if isinstance(listed, list) else set()


def save_pins(gateway: Gateway, pins: set[str]) -> None:
    gateway.write_bytes(PINS, json.dumps({"pinned": sorted(pins)}).encode())
