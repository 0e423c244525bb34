"""Repodata patch instructions (``patch_instructions.json``), as conda-index applies them.

A fix for ``x.tar.bz2`` also fixes ``x.conda``: the two are one build in two formats.
A ``null`` value removes the key from the record.
"""

from __future__ import annotations

import copy
from typing import Any, BinaryIO

import orjson

from .compact import RawRecord, own
from .records import stem
from .repodata import SECTIONS


class BadPatch(ValueError):
    pass


def _update(records: dict[str, dict[str, Any]], fixes: dict[str, Any]) -> None:
    for filename, fix in fixes.items():
        record = records.get(filename)
        if record is None or not isinstance(fix, dict):
            continue
        for key, value in fix.items():
            if value is None:
                record.pop(key, None)
            else:
                record[key] = value


def _names(filename: str) -> list[tuple[str, str]]:
    """(section, name) pairs an instruction about ``filename`` reaches."""
    if filename.endswith(".tar.bz2"):
        return [("packages", filename), ("packages.conda", f"{stem(filename)}.conda")]
    return [("packages.conda", filename)]


def apply(repodata: dict[str, Any], instructions: dict[str, Any]) -> dict[str, Any]:
    """A patched deep copy of ``repodata``."""
    if not isinstance(instructions, dict):
        raise BadPatch("patch instructions are not a JSON object")
    patched = {k: copy.deepcopy(v) for k, v in repodata.items() if k not in SECTIONS}
    for section in SECTIONS:  # records read compactly become dicts of their own here
        if section in repodata:
            patched[section] = {
                fn: own(r) if isinstance(r, RawRecord) else copy.deepcopy(r)
                for fn, r in repodata[section].items()
            }
    packages = patched.setdefault("packages", {})
    conda = patched.setdefault("packages.conda", {})
    removed = set(patched.get("removed", []))
    tar_fixes = instructions.get("packages", {}) or {}
    _update(packages, tar_fixes)
    _update(conda, {f"{stem(k)}.conda": v for k, v in tar_fixes.items() if k.endswith(".tar.bz2")})
    _update(conda, instructions.get("packages.conda", {}) or {})
    for filename in instructions.get("revoke", []) or []:
        for section, name in _names(filename):
            record = patched[section].get(name)
            if record is not None:
                record["revoked"] = True
                record["depends"] = [*record.get("depends", []), "package_has_been_revoked"]
    for filename in instructions.get("remove", []) or []:
        for section, name in _names(filename):
            if patched[section].pop(name, None) is not None:
                removed.add(name)
    patched["removed"] = sorted(removed)
    return patched


def load_instructions(data: bytes, source: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadPatch(f"{source} is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadPatch(f"{source} is not a JSON object")
    return value


MAX_INSTRUCTIONS = 1 << 30  # conda-forge's largest (linux-64) is ~100 MB


def instructions_from_package(stream: BinaryIO, source: str) -> dict[str, dict[str, Any]]:
    """Per-subdir instructions from a conda-forge style repodata-patches package.

    Such a package carries ``<subdir>/patch_instructions.json`` files in its payload.
    """
    import bz2
    import tarfile

    found: dict[str, dict[str, Any]] = {}
    if not source.endswith(".tar.bz2"):
        raise BadPatch(f"{source}: only .tar.bz2 repodata-patches packages are supported")
    try:
        with tarfile.open(fileobj=bz2.BZ2File(stream), mode="r|") as tar:
            for member in tar:
                parts = member.name.split("/")
                if len(parts) == 2 and parts[1] == "patch_instructions.json" and member.isfile():
                    if member.size > MAX_INSTRUCTIONS:
                        raise BadPatch(f"{source}: {member.name} is implausibly large")
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[parts[0]] = load_instructions(handle.read(), member.name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadPatch(f"{source}: damaged package ({type(exc).__name__})") from None
    if not found:
        raise BadPatch(f"{source} holds no <subdir>/patch_instructions.json")
    return found
