"""Add packages to a custom channel: copy them verified, then re-index their subdirs.

Records come from the package files, except in a subdir that ``ferry sync`` also
mirrors into: there the upstream records of mirrored files are kept as they are.
"""

from __future__ import annotations

from conda_ferry.gateways import (
    Expected,
    Gateway,
    GatewayOptions,
    NotFound,
    UsageError,
    copy_file,
    open_gateway,
    split_url,
)
from conda_ferry.index.channel import IndexOptions
from conda_ferry.index.package import BadPackage, read_package
from conda_ferry.index.records import check_filename, is_subdir_name, record_from_package

from .errors import FerryError
from .indexing import reindex
from .state import SubdirState, subdir_lock


def publish_packages(
    channel: Gateway,
    packages: list[str],
    subdir: str | None,
    options: GatewayOptions,
    force: bool = False,
) -> list[str]:
    if subdir is not None and not is_subdir_name(subdir):
        raise UsageError(subdir, "not a subdir name", "e.g. --subdir linux-64 or noarch")
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
                record_from_package(meta)  # the indexer would skip what fails here
            except (BadPackage, ValueError) as exc:
                raise FerryError(f"{source.display(name)}: not a valid package: {exc}") from None
            own = meta.index.get("subdir")
            if own is not None and not is_subdir_name(own):
                raise FerryError(
                    f"{source.display(name)}: info/index.json names subdir {str(own)[:40]!r}, "
                    "which is not a subdir name (refused)"
                )
            if own is not None and subdir is not None and own != subdir:
                raise FerryError(
                    f"{source.display(name)}: built for {own}, not {subdir} (refused; "
                    "clients would be offered a package for another platform)"
                )
            where = subdir or own or "noarch"
            with subdir_lock(channel, where):
                _check_replace(channel, where, name, meta.sha256, force)
                copy_file(
                    source, name, channel, f"{where}/{name}", Expected(meta.size, meta.sha256)
                )
            placed.setdefault(where, []).append(f"{where}/{name}")
    # noarch too: conda and rattler refuse a channel without noarch/repodata.json
    reindex(channel, IndexOptions(subdirs=sorted({*placed, "noarch"})))
    return [path for paths in placed.values() for path in paths]


def _check_replace(channel: Gateway, subdir: str, name: str, sha256: str, force: bool) -> None:
    """A file name in a channel means one set of bytes: clients cache by name."""
    path = f"{subdir}/{name}"
    if name in SubdirState.load(channel, subdir).upstream_files:
        raise FerryError(
            f"{channel.display(path)}: the mirror holds this package from upstream "
            "(refused: publish custom packages under their own names)"
        )
    try:
        _, have = channel.checksum(path)
    except NotFound:
        return
    if have != sha256 and not force:
        raise FerryError(
            f"{channel.display(path)}: the channel has other bytes under this name "
            "(refused: clients may have cached them; --force to replace it anyway)"
        )
