"""A job file's YAML: parsed by PyYAML, or taken from the parses of files read before.

cron reads the same job file every night, and importing PyYAML costs 10 ms of every
start (5 of them compiling one regular expression of its reader), a tenth of a
no-change re-sync. A parse is kept under the hash of the file's text and of the
PyYAML that made it, in the user's cache directory (private to them, as the job
file's secrets may be in it), and only where it comes back exactly as made: a value
msgpack cannot hold as it is (a set, a NaN) keeps that file parsed every time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from conda_ferry import __version__, cache_home
from conda_ferry.gateways import is_temp, temp_name

from .errors import ConfigError

if TYPE_CHECKING:
    import yaml

Where = tuple[str, ...]  # the keys that lead to a value
DIGEST = 16  # bytes of the digest that seals a kept parse
KEPT_AT_MOST = 16 << 20  # bytes of a kept parse read back
KEPT_FILES = 256  # kept parses, one per job text: a site's every job, and its edits


class Parsed(NamedTuple):
    document: Any
    lines: dict[Where, int]  # the line of each key (of the document: ())
    duplicates: list[tuple[Where, int, int]]  # a key given twice: first line, this line


def parse(path: str, text: str) -> Parsed:
    """The document of ``text``, read from ``path``; a YAML error is one line naming
    the file and its line."""
    key = _key(text)
    kept = _cached(key)
    if kept is not None:
        return kept
    parsed = _parse(path, text)
    _keep(key, parsed)
    return parsed


def _parse(path: str, text: str) -> Parsed:
    import yaml

    loader = _loader()
    try:  # composed for the lines of its keys, then loaded for its values
        node = yaml.compose(text, Loader=loader)
        document = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        line = error_line(exc)
        where = f"{path}:{line}" if line else path
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{where}: {problem} (fix the YAML syntax)") from None
    parsed = Parsed(document, {}, [])
    if node is not None:
        _walk(node, (), parsed)
    return parsed


def error_line(exc: Exception) -> int | None:
    """The line a YAML error names (PyYAML's marks count from 0), if it names one."""
    mark = getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark is not None else None


def _walk(node: yaml.Node, where: Where, parsed: Parsed) -> None:
    import yaml  # imported already: this walks what it composed

    parsed.lines[where] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*where, str(key.value))
            line = key.start_mark.line + 1
            if child in parsed.lines and child != where:
                parsed.duplicates.append((child, parsed.lines[child], line))
            parsed.lines[child] = line
            _walk(value, child, parsed)


@functools.cache
def _loader() -> type:
    """PyYAML's safe loader without implicit dates: ``after: 2024-13-01`` stays a
    string that the job reader names with its line, instead of failing inside the
    YAML library."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return Loader


def _key(text: str) -> str:
    """The text's hash, with ferry's version and the installed PyYAML's (found, not
    imported): another PyYAML may read the same text otherwise."""
    spec = importlib.util.find_spec("yaml")
    origin = spec.origin if spec is not None and spec.origin else ""
    with contextlib.suppress(OSError):
        stat = os.stat(origin)
        origin = f"{origin} {stat.st_size} {stat.st_mtime_ns}"
    made = f"{__version__}\n{origin}\n".encode()
    return hashlib.blake2b(made + text.encode(), digest_size=20).hexdigest()


def _path(key: str) -> Path:
    return cache_home() / "jobs" / f"{key}.msgpack"


def _sealed(data: bytes) -> bytes:
    """``data`` with its own digest before it: a kept parse that a bit flip changed
    would still decode, as another job (another target, say)."""
    return hashlib.blake2b(data, digest_size=DIGEST).digest() + data


def _cached(key: str) -> Parsed | None:
    path = _path(key)
    try:
        with path.open("rb") as kept:
            sealed = kept.read(KEPT_AT_MOST + 1)  # a job is a few kB; this is not one
        if len(sealed) > KEPT_AT_MOST or _sealed(sealed[DIGEST:]) != sealed:
            return None  # damaged: parsed again
        document, lines, duplicates = msgspec.msgpack.decode(sealed[DIGEST:])
        with contextlib.suppress(OSError):
            os.utime(path)  # used: the last to go (see _keep)
        return Parsed(
            document,
            {tuple(where): line for where, line in lines},
            [(tuple(where), first, line) for where, first, line in duplicates],
        )
    except (OSError, ValueError, TypeError, msgspec.DecodeError):
        return None  # none kept, or not readable: parsed again


def _keep(key: str, parsed: Parsed) -> None:
    try:
        data = msgspec.msgpack.encode(
            [parsed.document, list(parsed.lines.items()), parsed.duplicates]
        )
        if not _same(msgspec.msgpack.decode(data)[0], parsed.document):
            return  # it would not come back as it is
    except (TypeError, ValueError, OverflowError, msgspec.MsgspecError):
        return  # a value msgpack has no form for
    path = _path(key)
    with contextlib.suppress(OSError):  # only ever a shortcut
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = temp_name(str(path))  # the gateways' pattern, swept below once stale
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(_sealed(data))
        os.replace(temp, path)
        # each edit of each job adds one: the least recently used go past a bound, and
        # what a writer killed mid-write left
        kept, stale, now = [], [], time.time()
        for p in path.parent.iterdir():
            if p.name.endswith(".msgpack"):
                kept.append((p.stat().st_mtime, p))
            elif is_temp(p.name) and p.stat().st_mtime < now - 60:  # not another's, mid-write
                stale.append(p)
        for old in [*(p for _, p in sorted(kept)[:-KEPT_FILES]), *stale]:
            old.unlink(missing_ok=True)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types throughout (1, 1.0 and True are equal, not same)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        pairs = zip(a.items(), b.items(), strict=False)
        return len(a) == len(b) and all(
            _same(ka, kb) and _same(va, vb) for (ka, va), (kb, vb) in pairs
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, float) and math.isnan(a):
        return False
    return bool(a == b)
