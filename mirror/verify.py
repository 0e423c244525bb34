"""Check a channel against its repodata: every listed file present and intact."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from conda_ferry.gateways import Gateway, GatewayError, NotFound
from conda_ferry.index import repodata
from conda_ferry.index.channel import discover_subdirs
from conda_ferry.index.records import EXTENSIONS


def _check(
    gateway: Gateway, path: str, record: dict[str, Any], present: bool
) -> tuple[str, str | None]:
    if not present:
        return "missing", path
    try:
        size, sha = gateway.checksum(path)
    except GatewayError as exc:
        return "corrupt", f"{path}: {exc.message}"
    if size != record.get("size") or (record.get("sha256") and sha != record["sha256"]):
        return "corrupt", f"{path}: size or sha256 differs from its record"
    return "ok", None


def verify_channel(gateway: Gateway, subdirs: list[str] | None, jobs: int) -> dict[str, Any]:
    findings: dict[str, Any] = {"checked": 0, "missing": [], "corrupt": [], "extra": []}
    for subdir in subdirs or discover_subdirs(gateway):
        try:
            document = repodata.loads(gateway.read_bytes(f"{subdir}/repodata.json"))
        except NotFound:
            findings["missing"].append(f"{subdir}/repodata.json")
            continue
        except ValueError:
            findings["corrupt"].append(f"{subdir}/repodata.json: not valid JSON")
            continue
        records = {**document.get("packages", {}), **document.get("packages.conda", {})}
        try:
            listing = {f.name for f in gateway.list(subdir) if not f.is_dir}
        except NotFound:
            listing = set()
        present = {n for n in listing if n.endswith(EXTENSIONS) and not n.startswith(".")}
        findings["extra"].extend(f"{subdir}/{n}" for n in sorted(present - records.keys()))

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            checks = [(gateway, f"{subdir}/{n}", records[n], n in present) for n in sorted(records)]
            for kind, item in pool.map(lambda args: _check(*args), checks):
                findings["checked"] += 1
                if item is not None:
                    findings[kind].append(item)
    return findings
