"""Fetch an upstream subdir's repodata: compressed when served, conditional always."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
import zstandard

from conda_ferry.gateways import Gateway, GatewayError, NotFound
from conda_ferry.index import repodata
from conda_ferry.index.channeldata import extras_from

from .errors import FerryError

log = logging.getLogger("ferry.upstream")
VARIANTS = ("repodata.json.zst", "repodata.json")
MAX_REPODATA = 4 << 30  # a zstd frame that expands beyond this is refused


@dataclass
class Upstream:
    subdir: str
    document: dict[str, Any] | None  # None: not modified since the validators
    etag: str | None
    last_modified: str | None
    variant: str


def fetch(
    gateway: Gateway,
    subdir: str,
    variant: str | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
) -> Upstream:
    """One conditional request when the variant is known; else .zst, then plain."""
    order = [variant] if variant else list(VARIANTS)
    for index, name in enumerate(order):
        path = f"{subdir}/{name}"
        try:
            fetched = gateway.fetch_if_changed(path, etag, last_modified)
        except NotFound:
            if index + 1 < len(order):
                continue
            if variant:  # the remembered variant went away: look again
                return fetch(gateway, subdir)
            raise FerryError(
                f"{gateway.display(f'{subdir}/repodata.json')}: upstream serves no repodata "
                f"for {subdir} (check the source URL and the subdir name)"
            ) from None
        if fetched is None:
            return Upstream(subdir, None, etag, last_modified, name)
        with fetched:
            raw = fetched.stream.read()
        if name.endswith(".zst"):
            try:
                raw = repodata.unzst(raw, MAX_REPODATA)
            except zstandard.ZstdError as exc:
                raise FerryError(f"{gateway.display(path)}: not valid zstd ({exc})") from None
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FerryError(f"{gateway.display(path)}: not valid JSON ({exc})") from None
        if not isinstance(document, dict):
            raise FerryError(f"{gateway.display(path)}: repodata is not a JSON object")
        return Upstream(subdir, document, fetched.info.etag, fetched.last_modified, name)
    raise AssertionError("unreachable")


class Descriptions:
    """What upstream says about its packages beyond repodata (channeldata.json,
    run_exports.json), so the mirror can publish both for what it keeps without
    reading a single package. Either file may be absent or unreadable: the mirror's
    copy then lacks what it would have said, nothing more."""

    def __init__(self, source: Gateway) -> None:
        self._source = source
        document = self._optional("channeldata.json")
        packages = document.get("packages") if isinstance(document, dict) else None
        self._about: dict[str, Any] = packages if isinstance(packages, dict) else {}

    def _optional(self, path: str) -> Any:
        try:
            return orjson.loads(self._source.read_bytes(path))
        except (GatewayError, orjson.JSONDecodeError) as exc:
            log.debug("%s: not used (%s)", self._source.display(path), exc)
            return None

    def extras(self, subdir: str, records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The channeldata input of each record's file, by file name."""
        document = self._optional(f"{subdir}/run_exports.json")
        run_exports = repodata.records(document) if isinstance(document, dict) else {}
        out: dict[str, dict[str, Any]] = {}
        for filename, record in records.items():
            entry = run_exports.get(filename)
            exports = entry.get("run_exports") if isinstance(entry, dict) else None
            about = self._about.get(str(record.get("name")))
            out[filename] = extras_from(
                about if isinstance(about, dict) else {},
                exports if isinstance(exports, dict) else None,
            )
        return out
