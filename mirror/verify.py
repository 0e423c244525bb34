"""Check a channel against its repodata: every listed file present and intact."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from conda_ferry.gateways import Gateway, GatewayError
from conda_ferry.index.channel import discover_subdirs
from conda_ferry.index.subdir import SubdirView

from .state import SubdirState


def _check(gateway: Gateway, path: str, record: dict[str, Any]) -> tuple[str, str | None]:
    try:
        size, sha = gateway.checksum(path)
    except GatewayError as exc:
        return "corrupt", f"{path}: {exc.message}"
    if size != record.get("size") or (record.get("sha256") and sha != record["sha256"]):
        return "corrupt", f"{path}: size or sha256 differs from its record"
    return "ok", None


def verify_channel(gateway: Gateway, subdirs: list[str] | None, jobs: int) -> dict[str, Any]:
    findings: dict[str, Any] = {
        "checked": 0,
        "subdirs": [],
        "missing": [],
        "corrupt": [],
        "extra": [],
        "unindexed": [],
    }
    for subdir in subdirs or discover_subdirs(gateway):
        view = SubdirView.read(gateway, subdir)
        if view.repodata_json is None:
            if subdirs or view.packages:  # asked for, or holding packages: a finding
                findings["unindexed"].append(subdir)
            continue
        findings["subdirs"].append(subdir)
        if view.unreadable:
            findings["corrupt"].append(f"{subdir}/repodata.json: not valid JSON")
            continue
        records = view.published
        retiring = SubdirState.load(gateway, subdir).due.keys()  # kept for cached indexes
        findings["extra"].extend(
            f"{subdir}/{n}" for n in sorted(view.packages.keys() - records.keys() - retiring)
        )
        findings["missing"].extend(
            f"{subdir}/{n}" for n in sorted(records.keys() - view.packages.keys())
        )
        findings["checked"] += len(records.keys() - view.packages.keys())
        present = sorted(records.keys() & view.packages.keys())
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            checks = [(f"{subdir}/{n}", records[n]) for n in present]
            for kind, item in pool.map(lambda args: _check(gateway, *args), checks):
                findings["checked"] += 1
                if item is not None:
                    findings[kind].append(item)
    return findings
