"""Job configs: YAML, validated in full before any network access."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from conda_ferry.gateways import GatewayOptions
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
    allow_hosts: tuple[str, ...] = ()
    allow_replace: bool = False
    grace: float = DEFAULT_GRACE  # seconds pruned files stay for clients' cached indexes
    strict: bool = False  # an include spec that matches nothing is an error
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
    "allow_hosts",
    "allow_replace",
    "grace",
    "strict",
    "outputs",
    "source_options",
    "target_options",
}


def load_job(path: str) -> Job:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (give the path of a job YAML)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_job(path, text)


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def parse_job(path: str, text: str) -> Job:
    src = Source(path, text)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise src.fail((), "a job is a mapping of keys", "start with 'source:' and 'target:'")
    top = Reader(data, src, (), TOP_KEYS)
    source = _local_relative(path, top.string("source", required=True) or "")
    target = _local_relative(path, top.string("target", required=True) or "")
    subdirs = top.strings("subdirs")
    if not subdirs:
        raise top.fail("subdirs", "is required", "write subdirs: [linux-64, noarch]")
    for subdir in subdirs:
        if not is_subdir_name(subdir):
            raise top.fail("subdirs", f"'{subdir}' is not a subdir name", "e.g. linux-64, noarch")
    filters = Filters.read(top.child("filters", Filters.KEYS))
    fraction = (
        top.number("max_prune_fraction", float, 0, 1) if "max_prune_fraction" in data else 0.5
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
        allow_hosts=top.strings("allow_hosts") or (),
        allow_replace=top.boolean("allow_replace", False),
        grace=top.duration("grace", DEFAULT_GRACE),
        strict=top.boolean("strict", False),
        outputs=read_options(top.child("outputs", _names(OutputOptions)), OutputOptions),
        source_options=read_options(
            top.child("source_options", _names(GatewayOptions)), GatewayOptions
        ),
        target_options=read_options(
            top.child("target_options", _names(GatewayOptions)), GatewayOptions
        ),
    )


def _local_relative(config_path: str, url: str) -> str:
    """A relative local path in a job means relative to the job file, not to cwd."""
    if "://" in url or os.path.isabs(os.path.expanduser(url)):
        return os.path.expanduser(url)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_path)), url))
