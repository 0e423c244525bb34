"""Check a channel against its repodata, and its snapshots against theirs: every
listed file present and intact. A file named by the live index and by snapshots is
read once."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from conda_ferry.gateways import Gateway, GatewayError
from conda_ferry.index.channel import discover_subdirs
from conda_ferry.index.subdir import SubdirView

from . import snapstore
from .errors import FerryError
from .state import SubdirState

Record = Mapping[str, Any]


def _checksum(gateway: Gateway, path: str) -> tuple[int, str] | str:
    try:
        return gateway.checksum(path)
    except GatewayError as exc:
        return exc.message


def verify_channel(gateway: Gateway, subdirs: list[str] | None, jobs: int) -> dict[str, Any]:
    findings: dict[str, Any] = {
        "checked": 0,
        "subdirs": [],
        "snapshots": [],
        "missing": [],
        "corrupt": [],
        "extra": [],
        "unindexed": [],
    }
    views: dict[str, SubdirView] = {}
    claims: list[tuple[str, str, Record]] = []  # (who names it, subdir/file, its record)
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
    paths = sorted({path for _, path, _ in claims if path in present})
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
    return findings
