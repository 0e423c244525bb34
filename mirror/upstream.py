"""Fetch an upstream subdir's repodata: compressed when served, conditional always."""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import orjson
import zstandard

from conda_ferry.gateways import Gateway, GatewayError, NotFound, redact
from conda_ferry.index import compact, repodata
from conda_ferry.index.channeldata import extras_from

from .errors import FerryError

log = logging.getLogger("ferry.upstream")
VARIANTS = ("repodata.json.zst", "repodata.json")


class Upstream(msgspec.Struct):
    subdir: str
    document: dict[str, Any] | None  # None: not modified since the validators
    etag: str | None
    last_modified: str | None
    variant: str
    bytes_read: int = 0  # of repodata, as served (compressed when it was)


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
            data: bytes | bytearray = fetched.stream.read()
        served = len(data)
        if name.endswith(".zst"):
            try:
                data = repodata.unzst(data)
            except zstandard.ZstdError as exc:
                raise FerryError(f"{gateway.display(path)}: not valid zstd ({exc})") from None
        document = parse(data, gateway.display(path))
        return Upstream(subdir, document, fetched.info.etag, fetched.last_modified, name, served)
    raise AssertionError("unreachable")


def parse(data: bytes | bytearray, where: str) -> dict[str, Any]:
    """A repodata document whose records are still their raw JSON (see index.compact)."""
    try:
        return compact.read_document(data)
    except compact.BadDocument as exc:
        raise FerryError(f"{where}: {exc}") from None


class Descriptions:
    """What upstream says about its packages beyond repodata (channeldata.json,
    run_exports.json), so the mirror can publish both for what it keeps without
    reading a single package. Either file may be absent or unreadable: the mirror's
    copy then lacks what it would have said, nothing more.

    ``ahead``: the same files read beforehand, in a thread of their own (see
    :class:`ReadAhead`); what it did not read is read from ``source`` when asked."""

    def __init__(self, source: Gateway, ahead: ReadAhead | None = None) -> None:
        self._source, self._ahead = source, ahead

    @functools.cached_property
    def _about(self) -> dict[str, Any]:
        document = self._optional("channeldata.json")
        packages = document.get("packages") if isinstance(document, dict) else None
        return packages if isinstance(packages, dict) else {}

    def _optional(self, path: str) -> Any:
        try:
            data = self._ahead.take(path) if self._ahead is not None else None
            return orjson.loads(self._source.read_bytes(path) if data is None else data)
        except (GatewayError, orjson.JSONDecodeError) as exc:
            log.debug("%s: not used (%s)", self._source.display(path), exc)
            return None

    @compact.bulk()  # an entry for each of hundreds of thousands of records
    def extras(
        self, subdir: str, records: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """The channeldata input of each record's file, by file name."""
        document = self._optional(f"{subdir}/run_exports.json")
        run_exports = repodata.records(document) if isinstance(document, dict) else {}
        out: dict[str, dict[str, Any]] = {}
        shared: dict[str, dict[str, Any]] = {}  # read-only: one per name, not per file
        described = self._about
        for filename, record in records.items():
            name = str(record.get("name"))
            about = described.get(name)
            about = about if isinstance(about, dict) else {}
            entry = run_exports.get(filename)
            exports = entry.get("run_exports") if isinstance(entry, dict) else None
            if isinstance(exports, dict):
                out[filename] = extras_from(about, exports)
                continue
            if name not in shared:  # (an empty result is shared too, not made again)
                shared[name] = extras_from(about, None)
            out[filename] = shared[name]
        return out


class ReadAhead:
    """Files of the upstream read in a thread of its own, on a gateway of its own,
    while the packages transfer: channeldata.json and each subdir's run_exports.json
    are only needed when a subdir is committed, and over a long way each costs a
    round trip, and a large channel's many megabytes, that no commit should wait for
    (nor the first package: channeldata.json was read before the transfer)."""

    def __init__(self, open_source: Callable[[], Gateway], paths: list[str]) -> None:
        self._read: dict[str, Future[bytes]] = {path: Future() for path in paths}
        every = list(self._read.items())  # the thread's own list: take() removes from ours
        thread = threading.Thread(
            target=self._run, args=(open_source, every), name="ferry-read-ahead", daemon=True
        )
        thread.start()

    @staticmethod
    def _run(open_source: Callable[[], Gateway], every: list[tuple[str, Future[bytes]]]) -> None:
        try:
            with open_source() as source:
                for path, read in every:
                    try:
                        read.set_result(source.read_bytes(path))
                    except Exception as exc:  # the reader's to judge, as if it read it
                        read.set_exception(exc)
        except BaseException as exc:  # not opened: each is read when asked instead
            for _, read in every:
                if not read.done():
                    read.set_exception(exc)

    def take(self, path: str) -> bytes | None:
        """``path``'s bytes, once read, or the GatewayError reading it raised (not
        there, not readable); None where it was not read ahead, or failed otherwise
        (the caller then reads it itself)."""
        read = self._read.pop(path, None)  # its bytes go with it, once parsed
        if read is None:
            return None
        try:
            return read.result()
        except GatewayError:
            raise
        except Exception:
            return None


def _local_path(url: str) -> str | None:
    if "://" not in url:
        return url
    return url.removeprefix("file://") if url.startswith("file://") else None


def _resolve(subdir_url: str, ref: str) -> str:
    """``ref`` relative to the subdir for any scheme (urljoin knows only a few)."""
    if "://" not in ref:
        parts = urlsplit(subdir_url)
        path = posixpath.normpath(posixpath.join(parts.path, ref))
        ref = urlunsplit(parts._replace(path=path))
    return ref if ref.endswith("/") else f"{ref}/"


def package_location(
    source_url: str, subdir: str, base_url: Any, allow_hosts: tuple[str, ...]
) -> str:
    """Where a subdir's packages are, following ``info.base_url`` (CEP 15) only where
    the job allows: upstream metadata must not choose what the runner reads with its
    own credentials (a ``file:`` URL into its disk, another bucket, an SSH host).

    A local upstream's packages stay below its root; a remote upstream's stay on its
    own server, or go over http(s) to a host named in ``allow_hosts``.
    """
    subdir_url = f"{source_url.rstrip('/')}/{subdir}/"
    if not base_url:
        return subdir_url

    def refuse(why: str) -> FerryError:
        return FerryError(
            f"{redact(subdir_url)}repodata.json: refused info.base_url "
            f"{redact(str(base_url))}: {why}"
        )

    if not isinstance(base_url, str) or "\x00" in base_url:
        raise refuse("not a URL")
    resolved = _resolve(subdir_url, base_url)
    root = _local_path(source_url)
    if root is not None:
        here = _local_path(resolved)
        root = os.path.realpath(root)
        if here is None or os.path.commonpath([root, os.path.realpath(here)]) != root:
            raise refuse("a local upstream's packages must lie below its own directory")
        return resolved
    target, origin = urlsplit(resolved), urlsplit(source_url)
    same = (target.scheme, target.hostname, target.port)
    if same == (origin.scheme, origin.hostname, origin.port):
        return resolved
    if target.scheme not in ("http", "https"):
        raise refuse("a remote upstream's packages may only come from http(s) servers")
    host = target.hostname or ""
    if host not in allow_hosts and f"{host}:{target.port}" not in allow_hosts:
        raise refuse(f"another host (add {host} to allow_hosts in the job to accept it)")
    return resolved
