"""Job configs: YAML, validated in full before any network access."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from conda_ferry.gateways import GatewayOptions
from conda_ferry.index.channel import KNOWN_SUBDIRS
from conda_ferry.index.publish import OutputOptions
from conda_ferry.index.records import is_subdir_name

from .commit import DEFAULT_GRACE
from .errors import ConfigError
from .filters import Filters
from .yamldoc import Reader, Source, parse_size, read_options

__all__ = ["Job", "load_job", "parse_job", "parse_size"]


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
    processes: int | None = None  # worker processes a large transfer may use; None: a core each
    allow_hosts: tuple[str, ...] = ()
    allow_replace: bool = False
    grace: float = DEFAULT_GRACE  # seconds pruned files stay for clients' cached indexes
    strict: bool = False  # an include spec that matches nothing is an error
    public_url: str | None = None  # where clients reach the mirror, for its pages
    snapshot_keep: int | None = None  # snapshots: {keep: N}: one after every sync that did work
    outputs: OutputOptions = field(default_factory=OutputOptions)
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
            "strict": self.strict,
            "outputs": asdict(self.outputs),
        }
        text = json.dumps(wanted, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


TOP_KEYS = {
    "source",
    "target",
    "subdirs",
    "filters",
    "prune",
    "max_prune_fraction",
    "jobs",
    "processes",
    "allow_hosts",
    "allow_replace",
    "grace",
    "strict",
    "public_url",
    "snapshots",
    "outputs",
    "source_options",
    "target_options",
}
SNAPSHOT_KEYS = {"keep"}


def load_job(path: str) -> Job:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (give the path of a job YAML)") from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read: {exc.strerror} (give the path of a job YAML)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (save the job YAML as UTF-8)") from None
    return parse_job(path, text)


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def parse_job(path: str, text: str) -> Job:
    """The job, or one ConfigError listing every mistake of the file in line order."""
    src = Source(path, text)
    data = src.document
    if not isinstance(data, dict):
        raise src.fail((), "a job is a mapping of keys", "start with 'source:' and 'target:'")
    top = Reader(data, src, (), TOP_KEYS)
    source = _local_relative(path, top.string("source", required=True) or "")
    target = _local_relative(path, top.string("target", required=True) or "")
    if source and source == target:
        top.note("target", "is the source", "mirror into another place")
    subdirs = _subdirs(top)
    fraction = (
        top.number("max_prune_fraction", float, 0, 1) if "max_prune_fraction" in data else None
    )
    job = Job(
        path=path,
        source=source,
        target=target,
        subdirs=subdirs,
        filters=Filters.read(top.child("filters", Filters.KEYS)),
        prune=top.boolean("prune", False),
        max_prune_fraction=0.5 if fraction is None else float(fraction),
        jobs=top.integer("jobs", 4) or 4,
        processes=top.integer("processes", None),
        allow_hosts=top.strings("allow_hosts") or (),
        allow_replace=top.boolean("allow_replace", False),
        grace=top.duration("grace", DEFAULT_GRACE),
        strict=top.boolean("strict", False),
        public_url=_public_url(top),
        snapshot_keep=_snapshot_keep(top),
        outputs=read_options(top.child("outputs", _names(OutputOptions)), OutputOptions),
        source_options=read_options(
            top.child("source_options", _names(GatewayOptions)), GatewayOptions, _scheme(source)
        ),
        target_options=read_options(
            top.child("target_options", _names(GatewayOptions)), GatewayOptions, _scheme(target)
        ),
    )
    src.check()
    return job


def _public_url(top: Reader) -> str | None:
    url = top.string("public_url")
    if url is not None and not url.lower().startswith(("http://", "https://")):
        top.note("public_url", "must be an http(s) URL", "the URL clients use for this channel")
        return None
    return url


def _snapshot_keep(top: Reader) -> int | None:
    if "snapshots" not in top.data:
        return None
    snapshots = top.child("snapshots", SNAPSHOT_KEYS)
    if "keep" not in snapshots.data:
        snapshots.note("keep", "is required", "write keep: 30 (how many to keep)")
    return snapshots.integer("keep", None)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def _subdirs(top: Reader) -> tuple[str, ...]:
    subdirs = top.strings("subdirs") or ()
    if not subdirs and "subdirs" not in top.data:
        top.note("subdirs", "is required", "write subdirs: [linux-64, noarch]")
    seen: set[str] = set()
    for subdir in subdirs:
        if subdir in seen:
            top.note("subdirs", f"'{subdir}' is listed twice", "list each subdir once")
        seen.add(subdir)
        if not is_subdir_name(subdir):
            top.note("subdirs", f"'{subdir}' is not a subdir name", "e.g. linux-64, noarch")
        elif subdir not in KNOWN_SUBDIRS:
            import difflib  # a mistake's suggestion: not loaded on every start

            close = difflib.get_close_matches(subdir, sorted(KNOWN_SUBDIRS), n=1, cutoff=0.8)
            if close:
                top.note(
                    "subdirs", f"'{subdir}' is not a known subdir", f"did you mean '{close[0]}'?"
                )
    return tuple(dict.fromkeys(subdirs))


def _local_relative(config_path: str, url: str) -> str:
    """A relative local path in a job means relative to the job file, not to cwd."""
    if "://" in url or os.path.isabs(os.path.expanduser(url)):
        return os.path.expanduser(url)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_path)), url))
