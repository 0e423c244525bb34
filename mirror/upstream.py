"""Fetch an upstream subdir's repodata: compressed when served, conditional always."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
import zstandard

from conda_ferry.gateways import Gateway, NotFound
from conda_ferry.index import repodata

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
