"""``ferry status``: what a mirror looks like now, from what it keeps on the target
(no upstream request): the last run of each subdir, its age and lag, its size, the
files waiting out their grace, who holds its lock, and its snapshots."""

from __future__ import annotations

import time
from typing import Any

from conda_ferry.gateways import Gateway, LockInfo, NotFound
from conda_ferry.gateways.httpdate import http_date
from conda_ferry.index.channel import discover_subdirs
from conda_ferry.index.subdir import SubdirView

from .snapstore import Snapshot, all_snapshots
from .state import SubdirState
from .units import human_age, parse_utc


def _lock(gateway: Gateway, subdir: str) -> str | None:
    try:
        held = LockInfo.from_bytes(gateway.read_lock(f"{subdir}/.ferry.lock"))
    except NotFound:
        return None
    return held.describe() if held else "held (its owner record is unreadable)"


def _modified(gateway: Gateway, path: str) -> float | None:
    try:
        return gateway.info(path).mtime
    except NotFound:
        return None


def subdir_status(
    gateway: Gateway, subdir: str, max_age: float | None, snapshots: list[Snapshot]
) -> dict[str, Any]:
    view = SubdirView.read(gateway, subdir)
    state = SubdirState.load(gateway, subdir)
    last = state.last_run
    seen = [t for t in (parse_utc(last.get("finished")), parse_utc(state.checked)) if t is not None]
    age = time.time() - max(seen) if seen else None
    problems = []
    if last.get("result") == "failed":
        problems.append(f"the last run failed: {last.get('message', '')}".rstrip(": "))
    if max_age is not None and (age is None or age > max_age):
        problems.append(
            "no run recorded"
            if age is None
            else f"the last run is {human_age(age)} old, more than --max-age {human_age(max_age)}"
        )
    upstream = http_date(state.last_modified)
    published = _modified(gateway, f"{subdir}/repodata.json")
    return {
        "subdir": subdir,
        "last_run": last,
        "checked": state.checked,
        "age_seconds": None if age is None else round(age),
        "upstream_last_modified": state.last_modified,
        # how long upstream's last change took to reach the mirror's repodata
        "lag_seconds": round(published - upstream) if upstream and published else None,
        "records": len(view.published),
        "packages": len(view.packages),
        "bytes": sum(info.size for info in view.packages.values()),
        "pending_deletion": len(state.due),
        "lock": _lock(gateway, subdir),
        "hold": state.hold or None,
        "snapshots": [s.name for s in snapshots if s.complete and subdir in s.subdirs],
        "problems": problems,
    }


def channel_status(
    gateway: Gateway, subdirs: list[str] | None, max_age: float | None
) -> list[dict[str, Any]]:
    snapshots = all_snapshots(gateway)
    return [
        subdir_status(gateway, s, max_age, snapshots) for s in subdirs or discover_subdirs(gateway)
    ]
