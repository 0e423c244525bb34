"""The invariant every test of a writer checks, as a client would read the channel:
each published record's file is present and correct, in repodata.json, its .zst and
the shards alike, and the JLAP log is a valid chain."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from conda_ferry.gateways import Gateway, NotFound, open_gateway
from conda_ferry.index import jlap, repodata, shards
from tests.clientread import read_msgpack_zst

Records = dict[str, Any]


def _optional(gateway: Gateway, path: str) -> bytes | None:
    try:
        return gateway.read_bytes(path)
    except NotFound:
        return None


def _names(document: dict[str, Any]) -> set[str]:
    return {*document.get("packages", {}), *document.get("packages.conda", {})}


def check_subdir(
    gateway: Gateway,
    subdir: str,
    files: str | None = None,
    with_shards: bool = True,
    digests: dict[str, str] | None = None,
) -> int:
    """Checks one subdir (a snapshot's: ``files`` is where its packages are); returns
    how many records repodata.json names. ``digests`` keeps the files' sha256 for the
    other subdirs of one check that name the same files (a snapshot names the live
    subdir's), so each is read once."""
    digests = {} if digests is None else digests
    data = _optional(gateway, f"{subdir}/repodata.json")
    if data is None:
        return 0
    records: Records = repodata.records(json.loads(data))
    files = files or subdir
    present = {f.name: f.size for f in gateway.files(files)}
    for filename, record in records.items():
        assert present.get(filename) == record["size"], f"{subdir}: {files}/{filename}"
        path = f"{files}/{filename}"
        if path not in digests:
            digests[path] = gateway.checksum(path)[1]
        assert digests[path] == record["sha256"], filename
    if (zst := _optional(gateway, f"{subdir}/repodata.json.zst")) is not None:
        missing = _names(json.loads(repodata.unzst(zst))) - present.keys()
        assert not missing, f"{subdir}/repodata.json.zst names missing {missing}"
    index = _optional(gateway, f"{subdir}/{shards.INDEX_NAME}") if with_shards else None
    if index is not None:
        for digest in read_msgpack_zst(index)["shards"].values():
            shard = read_msgpack_zst(
                gateway.read_bytes(f"{subdir}/{shards.shard_path(digest.hex())}")
            )
            missing = _names(shard) - present.keys()
            assert not missing, f"{subdir} shard names missing {missing}"
    if (log := _optional(gateway, f"{subdir}/repodata.jlap")) is not None:
        parsed = jlap.Jlap.parse(log)  # the checksum chain verifies
        steps = [json.loads(line) for line in parsed.patches]
        for before, after in itertools.pairwise(steps):
            assert before["to"] == after["from"], f"{subdir}/repodata.jlap: a gap in the chain"
        if steps:
            assert steps[-1]["to"] == parsed.latest, f"{subdir}/repodata.jlap: footer"
    return len(records)


def check_channel(gateway: Gateway, subdirs: tuple[str, ...] = ("linux-64", "noarch")) -> int:
    """Every subdir, and every snapshot's index (complete or not: all are served);
    returns how many records the live subdirs name."""
    try:
        snapshots = [e.path for e in gateway.list("snapshots") if e.is_dir]
    except NotFound:
        snapshots = []
    digests: dict[str, str] = {}
    for snapshot in snapshots:
        for subdir in subdirs:
            check_subdir(gateway, f"{snapshot}/{subdir}", subdir, digests=digests)
    return sum(check_subdir(gateway, subdir, digests=digests) for subdir in subdirs)


def assert_consistent(mirror: Path, subdirs: tuple[str, ...] = ("linux-64", "noarch")) -> int:
    """:func:`check_channel` of a local directory; returns how many records it names."""
    with open_gateway(str(mirror)) as gateway:
        return check_channel(gateway, subdirs)


def assert_channel_files_current(
    gateway: Gateway, subdirs: tuple[str, ...] = ("linux-64", "noarch")
) -> None:
    """After a clean sync: channeldata.json names every package name the subdirs
    publish, and nothing is owed for a later run (a run killed before the channel's
    own files once left them behind, and the rerun said "up to date")."""
    published = {
        record["name"]
        for subdir in subdirs
        for record in repodata.records(
            json.loads(gateway.read_bytes(f"{subdir}/repodata.json"))
        ).values()
    }
    channeldata = json.loads(gateway.read_bytes("channeldata.json"))
    assert set(channeldata["packages"]) == published
    assert not gateway.exists(".ferry/channeldata.owed")


def assert_converged(gateway: Gateway, subdirs: tuple[str, ...] = ("linux-64", "noarch")) -> None:
    """After a clean run: the log leads to the repodata.json served, no temp file left."""
    for subdir in subdirs:
        data = _optional(gateway, f"{subdir}/repodata.json")
        log = _optional(gateway, f"{subdir}/repodata.jlap")
        if data is not None and log is not None:
            assert jlap.Jlap.parse(log).latest == jlap.blake(data), f"{subdir}: JLAP lags"
    leftovers = [f.path for f in gateway.list("", recursive=True) if f.name.endswith(".part")]
    assert leftovers == [], leftovers
