"""Add packages to a custom channel: copy them verified, then re-index their subdirs.

Records come from the package files, except in a subdir that ``ferry sync`` also
mirrors into: there the upstream records of mirrored files are kept as they are.
"""

from __future__ import annotations

from typing import Any

from conda_ferry.gateways import (
    Gateway,
    GatewayOptions,
    NotFound,
    VerifyingReader,
    open_gateway,
    split_url,
)
from conda_ferry.gateways.errors import UsageError
from conda_ferry.index import repodata
from conda_ferry.index.channel import IndexOptions, index_channel
from conda_ferry.index.package import BadPackage, read_package
from conda_ferry.index.records import check_filename

from .errors import FerryError
from .state import SubdirState, subdir_lock, subdir_locks


def _mirrored_records(gateway: Gateway, subdir: str) -> dict[str, dict[str, Any]]:
    managed = set(SubdirState.load(gateway, subdir).upstream_files)
    if not managed:
        return {}
    try:
        document = repodata.loads(gateway.read_bytes(f"{subdir}/repodata.json"))
    except (NotFound, ValueError):
        return {}
    records = {**document.get("packages", {}), **document.get("packages.conda", {})}
    return {name: record for name, record in records.items() if name in managed}


def publish_packages(
    channel: Gateway, packages: list[str], subdir: str | None, options: GatewayOptions
) -> list[str]:
    placed: dict[str, list[str]] = {}
    for url in packages:
        directory, name = split_url(url)
        if not name:
            raise UsageError(url, "names no package file")
        with open_gateway(directory, options) as source:
            try:
                check_filename(name)
                with source.open_read(name) as stream:
                    meta = read_package(name, stream)
            except (BadPackage, ValueError) as exc:
                raise FerryError(f"{source.display(name)}: not a valid package: {exc}") from None
            where = subdir or str(meta.index.get("subdir") or "noarch")
            with subdir_lock(channel, where):
                reader = VerifyingReader(
                    source.open_read(name), source.display(name), meta.size, meta.sha256
                )
                with reader:
                    channel.write_atomic(f"{where}/{name}", reader.as_binary(), meta.size)
            placed.setdefault(where, []).append(f"{where}/{name}")
    with subdir_locks(channel, placed):
        index_channel(
            channel,
            IndexOptions(
                subdirs=sorted(placed),
                pinned={where: _mirrored_records(channel, where) for where in placed},
            ),
        )
    return [path for paths in placed.values() for path in paths]
