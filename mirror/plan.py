"""Compare what the filters want with what the mirror holds: add, update, remove."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import msgspec

Record = Mapping[str, Any]  # a dict, or upstream JSON read compactly (index.compact)


def same_file(a: Record | None, b: Record | None) -> bool:
    """Whether two records describe the same bytes (sha256, else md5, and size)."""
    if a is None or b is None or a.get("size") != b.get("size"):
        return False
    if a.get("sha256") and b.get("sha256"):
        return bool(a["sha256"] == b["sha256"])
    return bool(a.get("md5")) and a.get("md5") == b.get("md5")


class Plan(msgspec.Struct, dict=True):
    subdir: str
    desired: dict[str, Record]
    add: list[str] = []
    update: list[str] = []
    remove: list[str] = []
    retained: dict[str, Record] = {}  # no longer wanted, not pruned
    # published files whose upstream record now describes other bytes, same name
    replaced: list[str] = []
    # on the target, unpublished, of the record's size: a killed run's work, taken as
    # it is when the journal vouches for it (adopt) or once it is re-read (check)
    adopt: list[str] = []
    check: list[str] = []

    @functools.cached_property
    def add_bytes(self) -> int:
        return sum(int(self.desired[fn].get("size") or 0) for fn in self.add)

    def as_dict(self) -> dict[str, Any]:
        return {
            "subdir": self.subdir,
            "add": self.add,
            "update": self.update,
            "remove": self.remove,
            "add_bytes": self.add_bytes,
            "retained": sorted(self.retained),
            "replaced": self.replaced,
            "adopt": self.adopt,
            "check": self.check,
        }


def make_plan(
    subdir: str,
    desired: dict[str, Record],
    published: Mapping[str, Record],
    present: dict[str, int],
    managed: set[str],
    prune: bool,
    allow_replace: bool = False,
    verified: dict[str, str] | None = None,
) -> Plan:
    """``published``: the mirror's current records; ``present``: file name -> size;
    ``managed``: files sync put there (custom packages are never touched).

    A published file whose upstream record now promises other bytes under the same
    name is an anomaly (a rebuilt package, or a tampered upstream): it is kept as it
    is and listed in ``replaced``, unless ``allow_replace``; then it is added again
    and listed too, so that its record is withdrawn before the file changes.

    ``verified``: the journal of files a killed run verified as they landed (name ->
    sha256): such a file is adopted, not fetched again."""
    plan = Plan(subdir, desired)
    for filename, record in desired.items():
        have = published.get(filename)
        if filename in present and present[filename] == record.get("size"):
            if have == record:  # most of a mirror, most nights
                continue
            if same_file(have, record):
                plan.update.append(filename)  # upstream hot-fixed the metadata only
                continue
        if have is not None and filename in present and not same_file(have, record):
            plan.replaced.append(filename)
            if not allow_replace:
                plan.retained[filename] = have
                continue
        elif have is None and present.get(filename) == record.get("size"):
            journal = (verified or {}).get(filename)
            if journal is not None and journal == record.get("sha256"):
                plan.adopt.append(filename)
            else:
                plan.check.append(filename)
            continue
        plan.add.append(filename)
    for filename in sorted((managed & present.keys()) - desired.keys()):
        if prune or filename not in published:
            plan.remove.append(filename)  # never-published leftovers always go
        else:
            plan.retained[filename] = published[filename]
    for names in (plan.add, plan.update, plan.replaced, plan.adopt, plan.check):
        names.sort()
    return plan
