"""The invariant every test of sync checks: each published record's file is present
and correct, in repodata.json, its .zst and the shards alike."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from conda_ferry.index import repodata, shards
from tests.clientread import read_msgpack_zst


def assert_consistent(mirror: Path, subdirs: tuple[str, ...] = ("linux-64", "noarch")) -> int:
    """Returns how many records were checked."""
    checked = 0
    for subdir in subdirs:
        path = mirror / subdir / "repodata.json"
        if not path.exists():
            continue
        document = json.loads(path.read_bytes())
        records: dict[str, Any] = {**document["packages"], **document["packages.conda"]}
        for filename, record in records.items():
            data = (mirror / subdir / filename).read_bytes()
            assert len(data) == record["size"], filename
            assert hashlib.sha256(data).hexdigest() == record["sha256"], filename
            checked += 1
        zst = mirror / subdir / "repodata.json.zst"
        if zst.exists():
            compressed = json.loads(repodata.unzst(zst.read_bytes()))
            for section in ("packages", "packages.conda"):
                for filename in compressed[section]:
                    assert (mirror / subdir / filename).exists(), filename
        index = mirror / subdir / shards.INDEX_NAME
        if index.exists():
            for digest in read_msgpack_zst(index.read_bytes())["shards"].values():
                shard_file = mirror / subdir / shards.shard_path(digest.hex())
                shard = read_msgpack_zst(shard_file.read_bytes())
                for section in ("packages", "packages.conda"):
                    for filename in shard[section]:
                        assert (mirror / subdir / filename).exists(), filename
    return checked
