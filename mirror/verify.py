"""Check a channel against its repodata, and its snapshots against theirs: every
listed file present and intact. A file named by the live index and by snapshots is
read once. The live subdirs' shards are read too: a sharded client reads only them."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zstandard

from conda_ferry.gateways import CHUNK, Gateway, GatewayError, NotFound
from conda_ferry.index import jlap, shards
from conda_ferry.index.channel import discover_subdirs
from conda_ferry.index.subdir import SubdirView

from . import sharded, snapstore
from .errors import FerryError
from .state import SubdirState

Record = Mapping[str, Any]


_MISSING = "missing"


def _checksum(gateway: Gateway, path: str) -> tuple[int, str] | str:
    try:
        return gateway.checksum(path)
    except NotFound:
        return _MISSING
    except GatewayError as exc:
        return exc.message


def verify_channel(gateway: Gateway, subdirs: list[str] | None, jobs: int) -> dict[str, Any]:
    findings: dict[str, Any] = {
        "checked": 0,
        "shards": 0,
        "subdirs": [],
        "snapshots": [],
        "missing": [],
        "corrupt": [],
        "extra": [],
        "unindexed": [],
    }
    views: dict[str, SubdirView] = {}
    claims: list[tuple[str, str, Record]] = []  # (who names it, subdir/file, its record)
    shard_digests: dict[str, str] = {}  # subdir/shards/file -> the sha256 it is named by
    for subdir in subdirs or discover_subdirs(gateway):
        view = views[subdir] = SubdirView.read(gateway, subdir)
        if view.repodata_json is None:
            if subdirs or view.packages:  # asked for, or holding packages: a finding
                findings["unindexed"].append(subdir)
            continue
        findings["subdirs"].append(subdir)
        if view.unreadable:
            findings["corrupt"].append(f"{subdir}/repodata.json: not valid JSON")
            continue
        retiring = SubdirState.load(gateway, subdir).due.keys()  # kept for cached indexes
        findings["extra"].extend(
            f"{subdir}/{n}" for n in sorted(view.packages.keys() - view.published.keys() - retiring)
        )
        claims.extend(("", f"{subdir}/{n}", r) for n, r in sorted(view.published.items()))
        findings["corrupt"].extend(_derived_problems(gateway, subdir, view.repodata_json))
        shard_digests.update(_shards(gateway, subdir, findings))
    for snapshot in snapstore.all_snapshots(gateway):
        findings["snapshots"].append(snapshot.name)
        for subdir in sorted(snapshot.subdirs.keys() & views.keys()):
            try:
                held = snapstore.records(gateway, snapshot.name, subdir) or {}
            except FerryError as exc:
                findings["corrupt"].append(str(exc))
                continue
            who = f" (snapshot {snapshot.name})"
            claims.extend((who, f"{subdir}/{n}", r) for n, r in sorted(held.items()))
    present = {
        f"{s}/{name}" for s, view in views.items() for name in view.packages
    }  # what the listings saw
    paths = sorted({path for _, path, _ in claims if path in present} | shard_digests.keys())
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        sums = dict(zip(paths, pool.map(lambda p: _checksum(gateway, p), paths), strict=True))
    for who, path, record in claims:
        findings["checked"] += 1
        found = sums.get(path)
        if found is None:
            findings["missing"].append(f"{path}{who}")
        elif isinstance(found, str):
            findings["corrupt"].append(f"{path}{who}: {found}")
        elif found[0] != record.get("size") or (
            record.get("sha256") and found[1] != record["sha256"]
        ):
            findings["corrupt"].append(f"{path}{who}: size or sha256 differs from its record")
    for path, digest in sorted(shard_digests.items()):
        findings["shards"] += 1
        found = sums[path]
        if isinstance(found, str):
            findings["missing" if found == _MISSING else "corrupt"].append(
                path if found == _MISSING else f"{path}: {found}"
            )
        elif found[1] != digest:
            findings["corrupt"].append(f"{path}: its sha256 is not the one it is named by")
    return findings


def _optional(gateway: Gateway, path: str) -> bytes | None:
    try:
        return gateway.read_bytes(path)
    except NotFound:
        return None


def _derived_problems(gateway: Gateway, subdir: str, data: bytes) -> list[str]:
    """What is wrong with the files clients read instead of repodata.json: the .zst
    most fetch first, and the log old clients patch their copy with. Nothing while a
    writer is republishing the subdir (its repodata.json changed meanwhile)."""
    problems = []
    zst = _optional(gateway, f"{subdir}/repodata.json.zst")
    if zst is not None and not _holds(zst, data):
        problems.append(f"{subdir}/repodata.json.zst: does not hold repodata.json")
    log = _optional(gateway, f"{subdir}/repodata.jlap")
    if log is not None:
        try:
            leads_here = jlap.Jlap.parse(log).latest == jlap.blake(data)
        except jlap.BadJlap:
            leads_here = False
        if not leads_here:
            problems.append(f"{subdir}/repodata.jlap: not a verified log leading to repodata.json")
    if problems and _optional(gateway, f"{subdir}/repodata.json") != data:
        return []
    return problems


def _holds(zst: bytes, data: bytes) -> bool:
    """``zst`` decompresses to exactly ``data``: compared a chunk at a time, so a
    large index is never held twice, and a bomb stops at the first byte too many."""
    view, at = memoryview(data), 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(zst)
        while chunk := reader.read(CHUNK):
            if view[at : at + len(chunk)] != chunk:
                return False
            at += len(chunk)
    except zstandard.ZstdError:
        return False
    return at == len(data)


def _shards(gateway: Gateway, subdir: str, findings: dict[str, Any]) -> dict[str, str]:
    """The shards ``subdir``'s shard index names, by path; none without an index."""
    try:
        index = sharded.read_index(gateway, subdir)
    except NotFound:
        return {}
    except (FerryError, GatewayError) as exc:
        findings["corrupt"].append(str(exc))
        return {}
    return {f"{subdir}/{shards.shard_path(d)}": d for d in index.shards.values()}
