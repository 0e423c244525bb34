"""``ferry index`` and the re-index after ``ferry publish``: a channel's subdirs
re-published from the files they hold, each through the one commit path."""

from __future__ import annotations

import time
from typing import Any

from conda_ferry.gateways import Gateway, GatewayOptions, UsageError, open_gateway, split_url
from conda_ferry.index.channel import (
    ChannelEntry,
    IndexOptions,
    IndexSummary,
    discover_subdirs,
    load_patch_file,
    load_patch_package,
    write_channeldata,
)
from conda_ferry.index.patches import BadPatch
from conda_ferry.index.publish import OutputOptions
from conda_ferry.index.subdir import SubdirView

from .channelpage import write_channel_page
from .commit import Committing, mirrored
from .errors import ConfigError
from .state import SubdirState, subdir_locks, sweep_temps
from .upstream import Descriptions


def reindex(target: Gateway, options: IndexOptions) -> IndexSummary:
    """Re-publish ``options.subdirs`` (default: every subdir found), each under its
    lock; mirrored records stay verbatim, other package files are read."""
    if not target.writable:
        raise UsageError(
            target.display(),
            "cannot index over a read-only protocol",
            "index the channel where its files are stored",
        )
    started = time.monotonic()
    subdirs = options.subdirs or discover_subdirs(target)
    summary = IndexSummary(target.display())
    everything: list[ChannelEntry] = []
    descriptions = Descriptions(target)  # what the channel said of mirrored packages
    with subdir_locks(target, subdirs):
        for subdir in subdirs:
            view = SubdirView.read(target, subdir)
            state = SubdirState.load(target, subdir)
            commit = mirrored(view, state, descriptions)
            sub, entries = Committing(target, view, commit, state, options).finish()
            summary.subdirs.append(sub)
            everything.extend(entries)
        if options.channeldata:
            sweep_temps(target, "", ".channeldata.json.")
            summary.written.extend(write_channeldata(target, subdirs, everything))
        summary.written.extend(write_channel_page(target, options.outputs.html))
    summary.seconds = time.monotonic() - started
    return summary


def ensure_noarch(target: Gateway, outputs: OutputOptions) -> None:
    """Give a channel its noarch/ when it has none: conda and rattler refuse a channel
    without noarch/repodata.json, even one meant for a single platform."""
    if not target.exists("noarch/repodata.json"):
        reindex(target, IndexOptions(subdirs=["noarch"], outputs=outputs, channeldata=False))


def load_patches(
    instructions: str | None, package: str | None, options: GatewayOptions
) -> dict[str, dict[str, Any]] | None:
    """Repodata patches from a patch_instructions.json or a repodata-patches package."""
    source = instructions or package
    if source is None:
        return None
    directory, name = split_url(source)
    with open_gateway(directory, options) as gateway:
        try:
            if instructions:
                return load_patch_file(gateway, name)
            return load_patch_package(gateway, name)
        except BadPatch as exc:
            raise ConfigError(f"{gateway.display(name)}: {exc}") from None
