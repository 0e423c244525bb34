"""Reading a YAML job file so that every mistake names its file and line.

The person reading the error is looking at a cron mail, not a debugger: one line,
``file:line: key: problem (fix)``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .yamlread import Parsed, parse

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
T = TypeVar("T")


class Source:
    """The document, the line of each of its keys, and the problems found in it:
    all reported at once, in line order, so one run shows every mistake."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.problems: list[tuple[int, str]] = []
        parsed = parse(path, text) if text else Parsed(None, {}, [])
        self.document, self.lines = parsed.document, parsed.lines
        for where, first, line in parsed.duplicates:
            self.note(
                where,
                f"duplicate key (line {first} has it too)",
                "keep one: YAML silently uses the last",
                line,
            )

    def _line(self, where: tuple[str, ...]) -> int:
        probe = where
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return self.lines.get(probe, 1)

    def note(self, where: tuple[str, ...], problem: str, fix: str, line: int = 0) -> None:
        """Record a problem and go on reading: the caller uses a default meanwhile."""
        name = ".".join(where) or "(top level)"
        line = line or self._line(where)
        self.problems.append((line, f"{self.path}:{line}: {name}: {problem} ({fix})"))

    def fail(self, where: tuple[str, ...], problem: str, fix: str) -> ConfigError:
        """A problem after which nothing more can be read; the earlier ones with it."""
        self.note(where, problem, fix)
        return self.error()

    def error(self) -> ConfigError:
        lines = [text for _, text in sorted(self.problems, key=lambda p: p[0])]
        return ConfigError("\n".join(dict.fromkeys(lines)))

    def check(self) -> None:
        if self.problems:
            raise self.error()


def expand(value: str, src: Source, where: tuple[str, ...]) -> str:
    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise src.fail(
                where, f"environment variable {name} is not set", f"export {name} before the run"
            )
        return os.environ[name]

    return _ENV.sub(lookup, value)


def parse_size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    match = _SIZE.match(str(value))
    if not match:
        return None
    number, unit, binary = match.groups()
    base = 1024 if binary and binary.lower() == "ib" else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper() or " "))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(value: Any) -> float | None:
    """Seconds from ``7d``, ``12h``, ``30m``, ``90s`` or ``0``; None if not one."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    match = _DURATION.match(str(value))
    if not match:
        return None
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


class Reader:
    def __init__(
        self, data: dict[str, Any], src: Source, where: tuple[str, ...], allowed: set[str]
    ) -> None:
        self.data, self.src, self.where = data, src, where
        for key in data:
            if key not in allowed:
                import difflib  # a mistake's suggestion: not loaded on every start

                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                fix = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"known keys: {', '.join(sorted(allowed))}"
                )
                src.note((*where, str(key)), "unknown key", fix)

    def fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return self.src.fail((*self.where, key), problem, fix)

    def note(self, key: str, problem: str, fix: str) -> None:
        self.src.note((*self.where, key), problem, fix)

    def string(self, key: str, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.note(key, "is required", f"add '{key}: <url or path>'")
            return None
        if not isinstance(value, str) or not value.strip():
            self.note(key, "must be a non-empty string", "quote the value")
            return None
        return expand(value.strip(), self.src, (*self.where, key))

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.note(key, f"must be true or false, not {value!r}", "write true or false")
            return default
        return value

    def integer(self, key: str, default: int | None, minimum: int = 1) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.note(
                key,
                f"must be a whole number >= {minimum}, not {value!r}",
                f"write e.g. {key}: {max(minimum, 4)}",
            )
            return default
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.note(key, "must be a list of strings", f'write {key}: ["..."]')
            return None
        return tuple(value)

    def number(self, key: str, kind: type, minimum: float | None, maximum: float | None) -> Any:
        value = self.data.get(key)
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float) if kind is float else int)
            or (isinstance(value, float) and not math.isfinite(value))
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
        ):
            what = "a number" if kind is float else "a whole number"
            self.note(key, f"must be {what} {bounds}, not {value!r}", f"e.g. {key}: {minimum}")
            return None
        return kind(value)

    def duration(self, key: str, default: float) -> float:
        if key not in self.data:
            return default
        seconds = parse_duration(self.data[key])
        if seconds is None:
            self.note(key, f"is not a duration: {self.data[key]!r}", f"e.g. {key}: 7d (or 12h, 0)")
            return default
        return seconds

    def child(self, key: str, allowed: set[str]) -> Reader:
        """A reader of the mapping under ``key``, which may hold only ``allowed``."""
        return Reader(self.mapping(key), self.src, (*self.where, key), allowed)

    def mapping(self, key: str) -> dict[str, Any]:
        if key in self.data and self.data[key] is None:
            self.note(key, "is empty", f"indent its keys under '{key}:', or remove it")
            return {}
        value = self.data.get(key) or {}
        if not isinstance(value, dict):
            self.note(key, "must be a mapping", f"indent the keys under '{key}:'")
            return {}
        return value

    def date(self, key: str) -> dt.date | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            self.note(key, f"is not a date: {value!r}", "write YYYY-MM-DD")
            return None


def read_options(reader: Reader, cls: type[T], scheme: str = "") -> T:
    """An options dataclass (``GatewayOptions``, ``OutputOptions``) from a mapping whose
    keys are its declared fields: the same declaration the command line is made from.
    ``scheme``: the URL's, so that an option its protocol ignores is named."""
    values: dict[str, Any] = {}
    for spec in fields(cls):  # type: ignore[arg-type]
        key, default, meta = spec.name, spec.default, spec.metadata
        if key not in reader.data:
            continue
        protocols = meta.get("protocols") or ()
        if scheme and protocols and scheme not in protocols:
            reader.note(
                key, f"does nothing for a {scheme} URL", f"it applies to {', '.join(protocols)}"
            )
        if isinstance(default, bool):
            values[key] = reader.boolean(key, default)
        elif isinstance(default, (int, float)):
            number = reader.number(key, type(default), meta.get("minimum"), meta.get("maximum"))
            if number is not None:
                values[key] = number
        else:
            value = reader.string(key)
            if value and meta.get("kind") == "file":
                value = os.path.expanduser(value)
                if not Path(value).is_file():
                    reader.note(key, f"no such file: {value}", "give the path of a file")
            values[key] = value
    return cls(**values)
