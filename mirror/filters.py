"""Which upstream records a mirror keeps, with conda's own spec semantics.

Each rule is a small class that can say why it dropped a record, so that
``--explain NAME`` can answer "why is my package (not) in the mirror?".
Versions and match specs go through py-rattler: conda's ordering is never
re-implemented here.
"""

from __future__ import annotations

import calendar
import fnmatch
import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import rattler

from .config import Filters

log = logging.getLogger("ferry.filters")
Key = tuple[str, str]  # (subdir, filename)
Record = dict[str, Any]
_GLOB = set("*?[")


def _is_name_glob(text: str) -> bool:
    return (
        " " not in text.strip()
        and bool(_GLOB & set(text))
        and not any(op in text for op in "<>=!,|")
    )


class SpecMatcher:
    """A match spec, or a bare name glob such as ``*-dbg``."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self.glob: str | None = None
        self.spec: rattler.MatchSpec | None = None
        self.name: str | None = None
        if _is_name_glob(self.text):
            self.glob = self.text.lower()
            return
        try:
            self.spec = rattler.MatchSpec(self.text)
        except Exception as exc:  # rattler raises its own parse error types
            raise ValueError(str(exc).splitlines()[0]) from None
        name = self.text.split()[0].split("[")[0]
        for op in "<>=!~":
            name = name.split(op)[0]
        self.name = name.strip().lower()
        if _GLOB & set(self.name):
            self.glob, self.name = self.name, None

    def names(self, index: dict[str, list[Key]]) -> list[str]:
        if self.name is not None:
            return [self.name] if self.name in index else []
        return [n for n in index if fnmatch.fnmatchcase(n, self.glob or "")]

    def matches(self, record: Record, as_package: Any) -> bool:
        if self.spec is None or self.text.lower() == (self.glob or ""):
            return fnmatch.fnmatchcase(str(record.get("name", "")).lower(), self.glob or "")
        if self.name is not None and record.get("name", "").lower() != self.name:
            return False
        package = as_package()
        return package is not None and bool(self.spec.matches(package))


def parse_spec(text: str) -> SpecMatcher:
    return SpecMatcher(text)


class Rule(Protocol):
    def reject(self, record: Record) -> str | None: ...


@dataclass
class ExcludeRule:
    specs: list[SpecMatcher]
    packages: Any

    def reject(self, record: Record) -> str | None:
        for spec in self.specs:
            if spec.matches(record, lambda: self.packages(record)):
                return f"excluded by '{spec.text}'"
        return None


@dataclass
class LicenseRule:
    allow: tuple[str, ...]
    deny: tuple[str, ...]

    def reject(self, record: Record) -> str | None:
        license_ = str(record.get("license") or "")
        lowered = license_.lower()
        for pattern in self.deny:
            if fnmatch.fnmatchcase(lowered, pattern.lower()):
                return f"license '{license_}' denied by '{pattern}'"
        if self.allow and not any(fnmatch.fnmatchcase(lowered, p.lower()) for p in self.allow):
            return f"license '{license_ or 'none'}' not in the allow list"
        return None


@dataclass
class DateRule:
    after: int | None  # ms since the epoch
    before: int | None

    def reject(self, record: Record) -> str | None:
        stamp = int(record.get("timestamp") or 0)
        stamp = stamp if stamp > 1e11 else stamp * 1000
        if self.after is not None and stamp < self.after:
            return "built before the 'after' date" if stamp else "has no timestamp"
        if self.before is not None and stamp >= self.before:
            return "built after the 'before' date"
        return None


@dataclass
class SizeRule:
    max_size: int

    def reject(self, record: Record) -> str | None:
        size = int(record.get("size") or 0)
        return f"{size} bytes is over max_size" if size > self.max_size else None


@dataclass
class Selection:
    kept: dict[str, dict[str, Record]]
    reasons: dict[Key, str] = field(default_factory=dict)
    dropped_dependencies: list[str] = field(default_factory=list)

    def explain(self, name: str, records: dict[str, dict[str, Record]]) -> list[str]:
        lines = []
        for subdir in sorted(records):
            for filename, record in sorted(records[subdir].items()):
                if record.get("name") != name:
                    continue
                verdict = "keep" if filename in self.kept.get(subdir, {}) else "drop"
                lines.append(
                    f"{verdict} {subdir}/{filename}: {self.reasons.get((subdir, filename), '')}"
                )
        return lines or [f"no upstream record is named '{name}'"]


def _ms(day: Any) -> int | None:
    if day is None:
        return None
    return calendar.timegm(day.timetuple()) * 1000


class Selector:
    def __init__(self, filters: Filters) -> None:
        self.filters = filters
        self._packages: dict[int, Any] = {}
        self._dep_specs: dict[str, SpecMatcher | None] = {}
        self._dep_matches: dict[str, list[Key]] = {}
        rules: list[Rule] = []
        if filters.exclude:
            rules.append(ExcludeRule([SpecMatcher(s) for s in filters.exclude], self.package))
        if filters.licenses_allow or filters.licenses_deny:
            rules.append(LicenseRule(filters.licenses_allow, filters.licenses_deny))
        if filters.after or filters.before:
            rules.append(DateRule(_ms(filters.after), _ms(filters.before)))
        if filters.max_size:
            rules.append(SizeRule(filters.max_size))
        self.rules = rules

    def package(self, record: Record) -> Any:
        """The record as rattler sees it, made once: specs match against this."""
        key = id(record)
        if key not in self._packages:
            try:
                self._packages[key] = rattler.PackageRecord(
                    name=record["name"],
                    version=str(record["version"]),
                    build=rattler.BuildString(str(record.get("build", ""))),
                    build_number=int(record.get("build_number", 0)),
                    subdir=str(record.get("subdir") or "noarch"),
                )
            except Exception:
                log.debug("unparseable record %s %s", record.get("name"), record.get("version"))
                self._packages[key] = None
        return self._packages[key]

    def select(self, records: dict[str, dict[str, Record]]) -> Selection:
        reasons: dict[Key, str] = {}
        blocked: dict[Key, str] = {}
        by_name: dict[str, list[Key]] = defaultdict(list)
        for subdir, section in records.items():
            for filename, record in section.items():
                key = (subdir, filename)
                by_name[str(record.get("name", "")).lower()].append(key)
                for rule in self.rules:
                    why = rule.reject(record)
                    if why:
                        blocked[key] = reasons[key] = why
                        break

        def get(key: Key) -> Record:
            return records[key[0]][key[1]]

        kept: set[Key] = set()
        if self.filters.include is None:
            for subdir, section in records.items():
                for filename in section:
                    key = (subdir, filename)
                    if key not in blocked:
                        kept.add(key)
                        reasons[key] = "no include filter: everything is mirrored"
        else:
            for text in self.filters.include:
                spec = SpecMatcher(text)
                for name in spec.names(by_name):
                    for key in by_name[name]:
                        if key in blocked or key in kept:
                            continue
                        if spec.matches(get(key), lambda k=key: self.package(get(k))):
                            kept.add(key)
                            reasons[key] = f"included by '{text}'"
            for section_key in (k for keys in by_name.values() for k in keys):
                reasons.setdefault(section_key, "not selected by any include spec")

        if self.filters.latest:
            self._keep_latest(kept, records, reasons)
        dropped: list[str] = []
        if self.filters.dependencies:
            dropped = self._close(kept, records, by_name, blocked, reasons)

        selection: dict[str, dict[str, Record]] = {subdir: {} for subdir in records}
        for subdir, filename in kept:
            selection[subdir][filename] = records[subdir][filename]
        return Selection(selection, reasons, dropped)

    def _keep_latest(
        self, kept: set[Key], records: dict[str, dict[str, Record]], reasons: dict[Key, str]
    ) -> None:
        groups: dict[tuple[str, str], list[Key]] = defaultdict(list)
        for key in kept:
            groups[(key[0], str(records[key[0]][key[1]]["name"]))].append(key)
        limit = self.filters.latest or 0
        for keys in groups.values():
            versions: dict[str, Any] = {}
            for key in keys:
                text = str(records[key[0]][key[1]]["version"])
                try:
                    versions[text] = rattler.Version(text)
                except Exception:
                    versions[text] = None
            ordered = sorted((v for v in versions.values() if v is not None), reverse=True)
            newest = {str(v) for v in ordered[:limit]}
            for key in keys:
                text = str(records[key[0]][key[1]]["version"])
                if versions[text] is None or str(versions[text]) not in newest:
                    kept.discard(key)
                    reasons[key] = f"not among the newest {limit} versions"

    def _dep(self, text: str) -> SpecMatcher | None:
        if text not in self._dep_specs:
            try:
                self._dep_specs[text] = SpecMatcher(text)
            except ValueError:
                log.warning("cannot parse dependency '%s'; ignored", text)
                self._dep_specs[text] = None
        return self._dep_specs[text]

    def _satisfying(
        self, text: str, records: dict[str, dict[str, Record]], by_name: dict[str, list[Key]]
    ) -> list[Key]:
        """Every record that satisfies dependency ``text``; thousands of records share
        the same few dependency strings, so each is matched once."""
        if text not in self._dep_matches:
            spec = self._dep(text)
            found: list[Key] = []
            if spec is not None and spec.name is not None and not spec.name.startswith("__"):
                for key in by_name.get(spec.name, []):
                    candidate = records[key[0]][key[1]]
                    if spec.matches(candidate, lambda c=candidate: self.package(c)):
                        found.append(key)
            self._dep_matches[text] = found
        return self._dep_matches[text]

    def _close(
        self,
        kept: set[Key],
        records: dict[str, dict[str, Record]],
        by_name: dict[str, list[Key]],
        blocked: dict[Key, str],
        reasons: dict[Key, str],
    ) -> list[str]:
        """Add, transitively, every record that satisfies a kept record's depends."""
        dropped: dict[str, None] = {}  # ordered and unique
        done: set[tuple[str, bool, str]] = set()  # a dependency, once expanded, is complete
        queue = deque(sorted(kept))
        while queue:
            subdir, filename = queue.popleft()
            record = records[subdir][filename]
            noarch = subdir == "noarch"
            allowed = set(records) if noarch else {subdir, "noarch"}
            for text in record.get("depends", []) or []:
                step = (str(text), noarch, "" if noarch else subdir)
                if step in done:
                    continue
                done.add(step)
                for key in self._satisfying(str(text), records, by_name):
                    if key[0] not in allowed or key in kept:
                        continue
                    if key in blocked:
                        note = (
                            f"{key[0]}/{key[1]} (needed by {filename} via '{text}') "
                            f"was {blocked[key]}"
                        )
                        dropped[note] = None
                        continue
                    kept.add(key)
                    reasons[key] = f"dependency of {subdir}/{filename} via '{text}'"
                    queue.append(key)
        return list(dropped)
