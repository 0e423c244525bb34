"""Job configs: YAML, validated in full before any network access.

A mistake is reported as one line naming the file, the line and the fix, since the
person reading it is looking at a cron mail, not a debugger.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conda_ferry.gateways import GatewayOptions, RetryPolicy

from .errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Filters:
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    dependencies: bool = False
    licenses_allow: tuple[str, ...] = ()
    licenses_deny: tuple[str, ...] = ()
    latest: int | None = None
    after: dt.date | None = None
    before: dt.date | None = None
    max_size: int | None = None


@dataclass(frozen=True)
class Outputs:
    zst: bool = True
    bz2: bool = False
    jlap: bool = True
    shards: bool = True


@dataclass(frozen=True)
class Job:
    path: str
    source: str
    target: str
    subdirs: tuple[str, ...]
    filters: Filters = field(default_factory=Filters)
    prune: bool = False
    max_prune_fraction: float = 0.5
    jobs: int = 4
    outputs: Outputs = field(default_factory=Outputs)
    source_options: GatewayOptions = field(default_factory=GatewayOptions)
    target_options: GatewayOptions = field(default_factory=GatewayOptions)

    def fingerprint(self, subdir: str) -> str:
        """Changes whenever anything that decides a subdir's content changes."""
        wanted = {
            "source": self.source,
            "subdir": subdir,
            "filters": asdict(self.filters),
            "subdirs": self.subdirs,
            "prune": self.prune,
            "outputs": asdict(self.outputs),
        }
        text = json.dumps(wanted, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------
class _Source:
    """Line numbers for every key of the loaded document."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines: dict[tuple[str, ...], int] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise ConfigError(f"{where}: {problem} (fix the YAML syntax)") from None
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, where: tuple[str, ...]) -> None:
        self.lines[where] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*where, str(key.value))
                self.lines[child] = key.start_mark.line + 1
                self._walk(value, child)

    def fail(self, where: tuple[str, ...], problem: str, fix: str) -> ConfigError:
        probe = where
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe, 1)
        name = ".".join(where) or "(top level)"
        return ConfigError(f"{self.path}:{line}: {name}: {problem} ({fix})")


def _expand(value: str, src: _Source, where: tuple[str, ...]) -> str:
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


class _Reader:
    def __init__(
        self, data: dict[str, Any], src: _Source, where: tuple[str, ...], allowed: set[str]
    ) -> None:
        self.data, self.src, self.where = data, src, where
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                fix = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"known keys: {', '.join(sorted(allowed))}"
                )
                raise src.fail((*where, str(key)), "unknown key", fix)

    def fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return self.src.fail((*self.where, key), problem, fix)

    def string(self, key: str, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(key, "is required", f"add '{key}: <url or path>'")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string", "quote the value")
        return _expand(value.strip(), self.src, (*self.where, key))

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {value!r}", "write true or false")
        return value

    def integer(self, key: str, default: int | None, minimum: int = 1) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(
                key,
                f"must be a whole number >= {minimum}, not {value!r}",
                f"write e.g. {key}: {max(minimum, 4)}",
            )
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "must be a list of strings", f'write {key}: ["..."]')
        return tuple(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key) or {}
        if not isinstance(value, dict):
            raise self.fail(key, "must be a mapping", f"indent the keys under '{key}:'")
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
            raise self.fail(key, f"is not a date: {value!r}", "write YYYY-MM-DD") from None


_GATEWAY_KEYS = {
    "endpoint_url",
    "region",
    "profile",
    "key_file",
    "known_hosts",
    "ca_bundle",
    "verify_tls",
    "timeout",
    "insecure_host_key",
    "retries",
}


def _gateway_options(reader: _Reader, key: str) -> GatewayOptions:
    sub = _Reader(reader.mapping(key), reader.src, (*reader.where, key), _GATEWAY_KEYS)
    key_file = sub.string("key_file")
    if key_file and not Path(os.path.expanduser(key_file)).is_file():
        raise sub.fail("key_file", f"no such file: {key_file}", "give the path of a private key")
    timeout = sub.data.get("timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise sub.fail("timeout", "must be a number of seconds", "write e.g. timeout: 60")
    retries = sub.integer("retries", 5) or 5
    return GatewayOptions(
        timeout=float(timeout),
        verify_tls=sub.boolean("verify_tls", True),
        ca_bundle=sub.string("ca_bundle"),
        retry=RetryPolicy(attempts=retries),
        endpoint_url=sub.string("endpoint_url"),
        region=sub.string("region"),
        profile=sub.string("profile"),
        key_file=key_file,
        known_hosts=sub.string("known_hosts"),
        insecure_skip_host_key=sub.boolean("insecure_host_key", False),
    )


TOP_KEYS = {
    "source",
    "target",
    "subdirs",
    "filters",
    "prune",
    "max_prune_fraction",
    "jobs",
    "outputs",
    "source_options",
    "target_options",
}
FILTER_KEYS = {
    "include",
    "exclude",
    "dependencies",
    "licenses",
    "latest",
    "after",
    "before",
    "max_size",
}


def load_job(path: str) -> Job:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (give the path of a job YAML)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_job(path, text)


def parse_job(path: str, text: str) -> Job:
    src = _Source(path, text)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise src.fail((), "a job is a mapping of keys", "start with 'source:' and 'target:'")
    top = _Reader(data, src, (), TOP_KEYS)
    source = _local_relative(path, top.string("source", required=True) or "")
    target = _local_relative(path, top.string("target", required=True) or "")
    subdirs = top.strings("subdirs")
    if not subdirs:
        raise top.fail("subdirs", "is required", "write subdirs: [linux-64, noarch]")
    for subdir in subdirs:
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9_]+)?", subdir):
            raise top.fail("subdirs", f"'{subdir}' is not a subdir name", "e.g. linux-64, noarch")

    raw_filters = _Reader(top.mapping("filters"), src, ("filters",), FILTER_KEYS)
    licenses = _Reader(
        raw_filters.mapping("licenses"), src, ("filters", "licenses"), {"allow", "deny"}
    )
    max_size = None
    if raw_filters.data.get("max_size") is not None:
        max_size = parse_size(raw_filters.data["max_size"])
        if max_size is None:
            raise raw_filters.fail(
                "max_size",
                f"is not a size: {raw_filters.data['max_size']!r}",
                "write e.g. 500MB or 2GiB",
            )
    filters = Filters(
        include=raw_filters.strings("include"),
        exclude=raw_filters.strings("exclude") or (),
        dependencies=raw_filters.boolean("dependencies", False),
        licenses_allow=licenses.strings("allow") or (),
        licenses_deny=licenses.strings("deny") or (),
        latest=raw_filters.integer("latest", None),
        after=raw_filters.date("after"),
        before=raw_filters.date("before"),
        max_size=max_size,
    )
    _check_specs(filters, raw_filters)

    fraction = top.data.get("max_prune_fraction", 0.5)
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 <= fraction <= 1
    ):
        raise top.fail("max_prune_fraction", "must be a number from 0 to 1", "e.g. 0.5")
    outputs_reader = _Reader(
        top.mapping("outputs"), src, ("outputs",), {"zst", "bz2", "jlap", "shards"}
    )
    return Job(
        path=path,
        source=source,
        target=target,
        subdirs=subdirs,
        filters=filters,
        prune=top.boolean("prune", False),
        max_prune_fraction=float(fraction),
        jobs=top.integer("jobs", 4) or 4,
        outputs=Outputs(
            zst=outputs_reader.boolean("zst", True),
            bz2=outputs_reader.boolean("bz2", False),
            jlap=outputs_reader.boolean("jlap", True),
            shards=outputs_reader.boolean("shards", True),
        ),
        source_options=_gateway_options(top, "source_options"),
        target_options=_gateway_options(top, "target_options"),
    )


def _local_relative(config_path: str, url: str) -> str:
    """A relative local path in a job means relative to the job file, not to cwd."""
    if "://" in url or os.path.isabs(os.path.expanduser(url)):
        return os.path.expanduser(url)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_path)), url))


def _check_specs(filters: Filters, reader: _Reader) -> None:
    from .filters import parse_spec

    for key in ("include", "exclude"):
        for spec in getattr(filters, key) or ():
            try:
                parse_spec(spec)
            except ValueError as exc:
                raise reader.fail(
                    key,
                    f"'{spec}' is not a match spec: {exc}",
                    "write e.g. 'numpy >=1.26' or 'python 3.11.*'",
                ) from None
