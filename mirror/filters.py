"""Which upstream records a mirror keeps, with conda's own spec semantics.

Each rule is a small class that can say why it dropped a record, so that
``--explain NAME`` can answer "why is my package (not) in the mirror?".
Versions and match specs go through py-rattler: conda's ordering is never
re-implemented here.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import fnmatch
import functools
import logging
import re
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import msgspec

from conda_ferry.index.rattlertypes import MatchSpec, Version, package_record

from .lockfiles import Locked, LockfileError, belongs_to, read_lockfile
from .yamldoc import Reader, Source, parse_size

log = logging.getLogger("ferry.filters")
Key = tuple[str, str]  # (subdir, filename)
Record = Mapping[str, Any]  # a dict, or upstream JSON read compactly (index.compact)
_GLOB = set("*?[")
T = TypeVar("T")


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
        self.spec: MatchSpec | None = None
        self.name: str | None = None
        if _is_name_glob(self.text):
            self.glob = self.text.lower()
            return
        try:
            self.spec = MatchSpec(self.text)
        except Exception as exc:  # rattler raises its own parse error types
            raise ValueError(str(exc).splitlines()[0]) from None
        name = self.text.split()[0].split("[")[0]
        for op in "<>=!~":
            name = name.split(op)[0]
        self.name = name.strip().lower()
        if _GLOB & set(self.name):
            self.glob, self.name = self.name, None

    @functools.cached_property
    def _by_glob(self) -> Callable[[str], object] | None:
        """A bare name glob's compiled test (None: the spec says more than a name)."""
        if self.spec is not None and self.text.lower() != (self.glob or ""):
            return None
        return re.compile(fnmatch.translate(self.glob or "")).match

    def names(self, index: dict[str, list[Candidate]]) -> list[str]:
        if self.name is not None:
            return [self.name] if self.name in index else []
        return [n for n in index if fnmatch.fnmatchcase(n, self.glob or "")]

    def matches(self, candidate: Candidate) -> bool:
        by_glob = self._by_glob
        if by_glob is not None:
            return by_glob(candidate.name) is not None
        if self.name is not None and candidate.name != self.name:
            return False
        package = candidate.package
        return package is not None and self.spec is not None and bool(self.spec.matches(package))


class Candidate:
    """One upstream record as the filters see it; its rattler form is built on first
    use only, since most records are judged by name alone."""

    __slots__ = ("_package", "filename", "key", "name", "record", "subdir")

    def __init__(self, subdir: str, filename: str, record: Record) -> None:
        self.subdir, self.filename, self.record = subdir, filename, record
        self.key: Key = (subdir, filename)
        self.name = str(record.get("name", "")).lower()
        self._package: Any = _UNSET

    @property
    def package(self) -> Any:
        """The record as rattler sees it (specs match against this), or None."""
        if self._package is _UNSET:
            record = self.record
            try:
                self._package = package_record(
                    name=record["name"],
                    version=str(record["version"]),
                    build=str(record.get("build", "")),
                    build_number=int(record.get("build_number", 0)),
                    subdir=str(record.get("subdir") or "noarch"),
                )
            except Exception:
                log.debug("unparseable record %s %s", record.get("name"), record.get("version"))
                self._package = None
        return self._package


_UNSET = object()


class Rule(Protocol):
    """A reject rule: builds itself from its own keys of ``filters:``, and says why
    it drops a record (None: it does not)."""

    KEYS: ClassVar[tuple[str, ...]]

    def reject(self, candidate: Candidate) -> str | None: ...


def _locked(reader: Reader) -> tuple[Locked, ...]:
    """The packages of ``lockfiles:``, whose paths are relative to the job file."""
    found: list[Locked] = []
    base = Path(reader.src.path).parent
    for name in reader.strings("lockfiles") or ():
        path = base / Path(name).expanduser()
        try:
            found.extend(read_lockfile(path))
        except LockfileError as exc:
            reader.note(
                "lockfiles", f"{path}: {exc}", "give a pixi.lock, conda-lock.yml or @EXPLICIT file"
            )
    return tuple(found)


def _specs(reader: Reader, key: str) -> tuple[str, ...]:
    good: list[str] = []
    for spec in reader.strings(key) or ():
        try:
            SpecMatcher(spec)
        except ValueError as exc:
            reader.note(
                key,
                f"'{spec}' is not a match spec: {exc}",
                "write e.g. 'numpy >=1.26' or 'python 3.11.*'",
            )
        else:
            good.append(spec)
    return tuple(good)


@dataclass(frozen=True)
class ExcludeRule:
    KEYS: ClassVar[tuple[str, ...]] = ("exclude",)
    specs: tuple[str, ...]

    @classmethod
    def read(cls, reader: Reader) -> ExcludeRule | None:
        specs = _specs(reader, "exclude")
        return cls(specs) if specs else None

    @functools.cached_property
    def _matchers(self) -> list[SpecMatcher]:
        return [SpecMatcher(s) for s in self.specs]

    def reject(self, candidate: Candidate) -> str | None:
        for spec in self._matchers:
            if spec.matches(candidate):
                return f"excluded by '{spec.text}'"
        return None


@dataclass(frozen=True)
class LicenseRule:
    KEYS: ClassVar[tuple[str, ...]] = ("licenses",)
    allow: tuple[str, ...]
    deny: tuple[str, ...]

    @classmethod
    def read(cls, reader: Reader) -> LicenseRule | None:
        sub = reader.child("licenses", {"allow", "deny"})
        allow, deny = sub.strings("allow") or (), sub.strings("deny") or ()
        return cls(allow, deny) if allow or deny else None

    @functools.cached_property
    def _compiled(self) -> tuple[list[tuple[str, Any]], Any]:
        """The deny globs one by one (a refusal names its pattern), the allow globs as one."""
        deny = [(p, re.compile(fnmatch.translate(p.lower())).match) for p in self.deny]
        allow = "|".join(fnmatch.translate(p.lower()) for p in self.allow)
        return deny, re.compile(allow).match if self.allow else None

    def reject(self, candidate: Candidate) -> str | None:
        license_ = str(candidate.record.get("license") or "")
        lowered = license_.lower()
        deny, allow = self._compiled
        for pattern, match in deny:
            if match(lowered):
                return f"license '{license_}' denied by '{pattern}'"
        if allow is not None and not allow(lowered):
            return f"license '{license_ or 'none'}' not in the allow list"
        return None


@dataclass(frozen=True)
class DateRule:
    KEYS: ClassVar[tuple[str, ...]] = ("after", "before")
    after: dt.date | None
    before: dt.date | None

    @classmethod
    def read(cls, reader: Reader) -> DateRule | None:
        after, before = reader.date("after"), reader.date("before")
        if after and before and after >= before:
            reader.note("before", f"{before} is not after {after}", "no record could pass both")
        return cls(after, before) if after or before else None

    def reject(self, candidate: Candidate) -> str | None:
        stamp = int(candidate.record.get("timestamp") or 0)
        stamp = stamp if stamp > 1e11 else stamp * 1000
        after, before = _ms(self.after), _ms(self.before)
        if after is not None and stamp < after:
            return "built before the 'after' date" if stamp else "has no timestamp"
        if before is not None and stamp >= before:
            return "built after the 'before' date"
        return None


@dataclass(frozen=True)
class SizeRule:
    KEYS: ClassVar[tuple[str, ...]] = ("max_size",)
    max_size: int

    @classmethod
    def read(cls, reader: Reader) -> SizeRule | None:
        value = reader.data.get("max_size")
        if value is None:
            return None
        size = parse_size(value)
        if size is None:
            reader.note("max_size", f"is not a size: {value!r}", "write e.g. 500MB or 2GiB")
            return None
        return cls(size)

    def reject(self, candidate: Candidate) -> str | None:
        size = int(candidate.record.get("size") or 0)
        return f"{size} bytes is over max_size" if size > self.max_size else None


REJECT_RULES: tuple[Any, ...] = (ExcludeRule, LicenseRule, DateRule, SizeRule)


@dataclass(frozen=True)
class Filters:
    """A job's ``filters:``: which records to include, the reject rules, how many
    versions to keep, and whether to follow dependencies."""

    include: tuple[str, ...] | None = None
    rules: tuple[Rule, ...] = ()
    latest: int | None = None
    dependencies: bool = False
    locked: tuple[Locked, ...] = ()  # what the job's lockfiles name, every channel's

    KEYS: ClassVar[set[str]] = {"include", "latest", "dependencies", "lockfiles"} | {
        key for rule in REJECT_RULES for key in rule.KEYS
    }

    @property
    def by_name(self) -> bool:
        """Whether the selection starts from names (include specs or lockfiles), so
        that the records of other names need not be read at all."""
        return self.include is not None or bool(self.locked)

    def for_channel(self, source: str) -> Filters:
        """These filters with only the locked packages of ``source``'s channel."""
        mine = tuple(entry for entry in self.locked if belongs_to(entry, source))
        return dataclasses.replace(self, locked=mine)

    @classmethod
    def read(cls, reader: Reader) -> Filters:
        rules = tuple(r for rule in REJECT_RULES if (r := rule.read(reader)) is not None)
        include = reader.strings("include")
        if include is not None:
            _specs(reader, "include")
        return cls(
            include=include,
            rules=rules,
            latest=reader.integer("latest", None),
            dependencies=reader.boolean("dependencies", False),
            locked=_locked(reader),
        )

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "filters") -> Filters:
        """From a plain mapping, as a job's ``filters:`` holds it."""
        return cls.read(Reader(data, Source(where, ""), ("filters",), cls.KEYS))

    def rule(self, kind: type[T]) -> T | None:
        return next((r for r in self.rules if isinstance(r, kind)), None)


class Selection(msgspec.Struct):
    kept: dict[str, dict[str, Record]]
    reasons: dict[Key, str] = {}
    dropped_dependencies: list[str] = []
    unmatched: list[str] = []  # include specs no record matched
    locked_problems: list[str] = []  # locked, but not to be had
    otherwise: str = ""  # the reason of a record ``reasons`` does not name

    def explain(self, name: str, records: Mapping[str, Mapping[str, Record]]) -> list[str]:
        lines = []
        for subdir in sorted(records):
            for filename, record in sorted(records[subdir].items()):
                if record.get("name") != name:
                    continue
                verdict = "keep" if filename in self.kept.get(subdir, {}) else "drop"
                why = self.reasons.get((subdir, filename), self.otherwise)
                lines.append(f"{verdict} {subdir}/{filename}: {why}")
        return lines


def _ms(day: dt.date | None) -> int | None:
    if day is None:
        return None
    return calendar.timegm(day.timetuple()) * 1000


class Selector:
    """``select()`` runs four named stages: reject, include, newest N, dependencies."""

    def __init__(self, filters: Filters) -> None:
        self.filters = filters
        self._dep_specs: dict[str, SpecMatcher | None] = {}
        self._dep_matches: dict[str, list[Candidate]] = {}

    def select(self, records: Mapping[str, Mapping[str, Record]]) -> Selection:
        candidates = [
            Candidate(subdir, filename, record)
            for subdir, section in records.items()
            for filename, record in section.items()
        ]
        by_name: dict[str, list[Candidate]] = defaultdict(list)
        if self.filters.by_name or self.filters.dependencies:
            for candidate in candidates:
                by_name[candidate.name].append(candidate)
        reasons: dict[Key, str] = {}
        blocked = self._reject(candidates, reasons)
        unmatched: list[str] = []
        kept = self._include(candidates, by_name, blocked, reasons, unmatched)
        problems = self._locked(candidates, blocked, reasons, kept)
        if self.filters.latest:
            self._newest(kept, reasons)
        dropped: list[str] = []
        if self.filters.dependencies:
            dropped = self._close(kept, set(records), by_name, blocked, reasons)
        selection: dict[str, dict[str, Record]] = {subdir: {} for subdir in records}
        for candidate in kept.values():
            selection[candidate.subdir][candidate.filename] = candidate.record
        otherwise = (
            "not selected by any include spec"
            if self.filters.by_name
            else "no include filter: everything is mirrored"
        )
        return Selection(selection, reasons, dropped, unmatched, problems, otherwise)

    def _reject(self, candidates: list[Candidate], reasons: dict[Key, str]) -> dict[Key, str]:
        blocked: dict[Key, str] = {}
        for candidate in candidates:
            for rule in self.filters.rules:
                why = rule.reject(candidate)
                if why:
                    blocked[candidate.key] = reasons[candidate.key] = why
                    break
        return blocked

    def _include(
        self,
        candidates: list[Candidate],
        by_name: dict[str, list[Candidate]],
        blocked: dict[Key, str],
        reasons: dict[Key, str],
        unmatched: list[str],
    ) -> dict[Key, Candidate]:
        if not self.filters.by_name:
            return {c.key: c for c in candidates if c.key not in blocked}
        kept: dict[Key, Candidate] = {}
        for text in self.filters.include or ():
            spec = SpecMatcher(text)
            matched = False
            for name in spec.names(by_name):
                for candidate in by_name[name]:
                    key = candidate.key
                    if not spec.matches(candidate):
                        continue
                    matched = True
                    if key not in blocked and key not in kept:
                        kept[key] = candidate
                        reasons[key] = f"included by '{text}'"
            if not matched:
                unmatched.append(text)
        return kept

    def _locked(
        self,
        candidates: list[Candidate],
        blocked: dict[Key, str],
        reasons: dict[Key, str],
        kept: dict[Key, Candidate],
    ) -> list[str]:
        """Exactly the files the lockfiles name, where upstream's record has the
        locked hashes; what cannot be had is named."""
        problems: list[str] = []
        if not self.filters.locked:
            return problems
        by_key = {c.key: c for c in candidates}
        for entry in self.filters.locked:
            candidate = by_key.get((entry.subdir, entry.filename))
            if candidate is None:
                problems.append(f"{entry.where}: upstream has no record of it")
                continue
            record = candidate.record
            for kind in ("sha256", "md5"):
                theirs, ours = getattr(entry, kind), record.get(kind)
                if theirs and ours and str(ours).lower() != theirs:
                    problems.append(f"{entry.where}: its {kind} is not upstream's (refused)")
                    reasons[candidate.key] = f"locked {kind} differs from upstream's record"
                    break
            else:
                if candidate.key in blocked:
                    problems.append(f"{entry.where}: {blocked[candidate.key]}")
                elif candidate.key not in kept:
                    kept[candidate.key] = candidate
                    reasons[candidate.key] = f"locked in {entry.lockfile}"
        return problems

    def _newest(self, kept: dict[Key, Candidate], reasons: dict[Key, str]) -> None:
        groups: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
        for candidate in kept.values():
            groups[(candidate.subdir, str(candidate.record["name"]))].append(candidate)
        limit = self.filters.latest or 0
        for group in groups.values():
            texts = [str(candidate.record["version"]) for candidate in group]
            versions: dict[str, Any] = {}
            for text in set(texts):  # a group's builds share far fewer versions
                try:
                    versions[text] = Version(text)
                except Exception:
                    versions[text] = None
            ordered = sorted((v for v in versions.values() if v is not None), reverse=True)
            newest = {str(v) for v in ordered[:limit]}
            keep = {t for t, v in versions.items() if v is not None and str(v) in newest}
            for candidate, text in zip(group, texts, strict=True):
                if text not in keep:
                    del kept[candidate.key]
                    reasons[candidate.key] = f"not among the newest {limit} versions"

    def _dep(self, text: str) -> SpecMatcher | None:
        if text not in self._dep_specs:
            try:
                self._dep_specs[text] = SpecMatcher(text)
            except ValueError:
                log.warning("cannot parse dependency '%s'; ignored", text)
                self._dep_specs[text] = None
        return self._dep_specs[text]

    def _satisfying(self, text: str, by_name: dict[str, list[Candidate]]) -> list[Candidate]:
        """Every record that satisfies dependency ``text``; thousands of records share
        the same few dependency strings, so each is matched once."""
        if text not in self._dep_matches:
            spec = self._dep(text)
            found: list[Candidate] = []
            if spec is not None and spec.name is not None and not spec.name.startswith("__"):
                found = [c for c in by_name.get(spec.name, []) if spec.matches(c)]
            self._dep_matches[text] = found
        return self._dep_matches[text]

    def _close(
        self,
        kept: dict[Key, Candidate],
        subdirs: set[str],
        by_name: dict[str, list[Candidate]],
        blocked: dict[Key, str],
        reasons: dict[Key, str],
    ) -> list[str]:
        """Add, transitively, every record that satisfies a kept record's depends."""
        dropped: dict[str, None] = {}  # ordered and unique
        done: set[tuple[str, bool, str]] = set()  # a dependency, once expanded, is complete
        queue = deque(kept[key] for key in sorted(kept))
        while queue:
            current = queue.popleft()
            subdir, filename = current.key
            noarch = subdir == "noarch"
            allowed = subdirs if noarch else {subdir, "noarch"}
            for text in current.record.get("depends", []) or []:
                step = (str(text), noarch, "" if noarch else subdir)
                if step in done:
                    continue
                done.add(step)
                satisfying = self._satisfying(str(text), by_name)
                spec = self._dep(str(text))
                if not satisfying and spec is not None and not str(spec.name).startswith("__"):
                    dropped[f"'{text}' (needed by {subdir}/{filename}) has no upstream record"] = (
                        None
                    )
                for candidate in satisfying:
                    key = candidate.key
                    if key[0] not in allowed or key in kept:
                        continue
                    if key in blocked:
                        note = (
                            f"{key[0]}/{key[1]} (needed by {filename} via '{text}') "
                            f"was {blocked[key]}"
                        )
                        dropped[note] = None
                        continue
                    kept[key] = candidate
                    reasons[key] = f"dependency of {subdir}/{filename} via '{text}'"
                    queue.append(candidate)
        return list(dropped)
