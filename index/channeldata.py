"""channeldata.json (CEP 38) and run_exports.json (CEP 12)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .compact import bulk, fields
from .records import package_key

ABOUT_KEYS = ("home", "license", "summary", "description", "dev_url", "doc_url", "source_url")
FLAGS = (
    "activate.d",
    "deactivate.d",
    "post_link",
    "pre_link",
    "pre_unlink",
    "binary_prefix",
    "text_prefix",
)
NO_FLAGS = dict.fromkeys(FLAGS, False)


def run_exports_document(subdir: str, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``entries`` maps filename to that package's run_exports."""
    doc: dict[str, Any] = {
        "info": {"subdir": subdir, "version": 1},
        "packages": {},
        "packages.conda": {},
    }
    for filename, run_exports in sorted(entries.items()):
        doc[package_key(filename)][filename] = {"run_exports": run_exports}
    return doc


@bulk()  # one entry per name, hundreds of thousands of records read
def channeldata(
    subdirs: list[str],
    records: Iterable[tuple[str, str, Mapping[str, Any], dict[str, Any]]],
) -> dict[str, Any]:
    """``records`` are (subdir, file name, record, extras with about/run_exports/flags).

    The newest version of each name (conda's ordering, via rattler) supplies the
    descriptive fields; flags are true when any build has them.
    """
    from .rattlertypes import Version

    packages: dict[str, dict[str, Any]] = {}
    newest: dict[str, tuple[Version, int]] = {}
    parsed: dict[str, Version] = {}
    for subdir, _, record, extras in records:
        name = record["name"]
        version, stamp, license = fields(record, ("version", "timestamp", "license"))
        entry = packages.get(name)
        if entry is None:
            entry = packages[name] = {**NO_FLAGS, "run_exports": {}, "subdirs": []}
        if subdir not in entry["subdirs"]:
            entry["subdirs"].append(subdir)
        features = extras.get("features")
        if features:  # most packages have none: one look, not one per flag
            for flag in FLAGS:
                if features.get(flag):
                    entry[flag] = True
        if extras.get("run_exports"):
            entry["run_exports"][version] = extras["run_exports"]
        stamp = int(stamp or 0)
        stamp = stamp // 1000 if stamp > 1e11 else stamp
        entry["timestamp"] = max(entry.get("timestamp", 0), stamp)
        text = str(version)
        order = parsed.get(text) or parsed.setdefault(text, Version(text))
        if name not in newest or newest[name][0] < order:
            newest[name] = (order, stamp)
            entry["version"] = version
            about = extras.get("about", {})
            for key in ABOUT_KEYS:
                if about.get(key):
                    entry[key] = about[key]
                elif key == "license" and license:
                    entry[key] = license
    for entry in packages.values():
        entry["subdirs"].sort()
    return {
        "channeldata_version": 1,
        "packages": dict(sorted(packages.items())),
        "subdirs": sorted(subdirs),
    }


def extras_from(entry: dict[str, Any], run_exports: dict[str, Any] | None) -> dict[str, Any]:
    """What :func:`channeldata` needs of a record whose package is not read: taken
    from an upstream channeldata.json entry and run_exports.json record."""
    return {
        "about": {key: entry[key] for key in ABOUT_KEYS if entry.get(key)},
        "features": {flag: True for flag in FLAGS if entry.get(flag)},
        "run_exports": run_exports or {},
    }
