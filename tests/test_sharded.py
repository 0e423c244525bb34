"""A sharded upstream (CEP 16) served by nginx: a job selecting by name reads the
shard index and only the shards of its closure, mirrors exactly what the whole
repodata.json would select, and asks again with one conditional request."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
import zstandard

from conda_ferry.gateways import open_gateway
from conda_ferry.index import shards
from conda_ferry.index.publish import OutputOptions, publish_subdir
from conda_ferry.mirror.filters import Filters, Selector
from tests.helpers import ferry, load, records
from tests.servers import Server, access_log
from tests.upstream import build_upstream, job_yaml

INCLUDE = "filters: {include: [pngtool], dependencies: true}\n"


def publish_sharded(root: Path, extra: dict[str, dict[str, Any]] | None = None) -> None:
    """Re-publish the upstream's subdirs with shards, ``extra`` records added."""
    with open_gateway(str(root)) as gateway:
        for subdir in ("linux-64", "noarch"):
            document = load(root / subdir / "repodata.json")
            if subdir == "linux-64" and extra:
                document["packages.conda"].update(extra)
            publish_subdir(gateway, subdir, document, OutputOptions(jlap=False))


def synthetic(count: int, builds: int = 20) -> dict[str, dict[str, Any]]:
    """Records shaped like conda-forge's, whose names the real packages never use."""
    names = count // builds
    out = {}
    for i in range(count):
        n, b = i % names, i // names
        name = f"synth-{n:05d}"
        out[f"{name}-{b}.0-h{i:08x}_0.conda"] = {
            "build": f"h{i:08x}_0",
            "build_number": 0,
            "depends": [f"synth-{(n * 7 + k) % names:05d} >=1" for k in range(4)] + ["__glibc"],
            "license": "MIT",
            "md5": f"{i:032x}",
            "name": name,
            "sha256": f"{i:064x}",
            "size": 1000 + i,
            "subdir": "linux-64",
            "timestamp": 1_700_000_000_000 + i,
            "version": f"{b}.0",
        }
    return out


def requests(nginx: Server, start: int, prefix: str) -> list[str]:
    lines = access_log(nginx)[start:]
    return [line for line in lines if f" /{prefix}/" in line]


def log_length(nginx: Server) -> int:
    return len(access_log(nginx))


def expected(root: Path, filters: str) -> dict[str, set[str]]:
    """What the whole repodata.json selects, by the same selector."""
    whole = {s: records(root / s / "repodata.json") for s in ("linux-64", "noarch")}
    import yaml

    kept = Selector(Filters.parse(yaml.safe_load(filters)["filters"])).select(whole).kept
    return {s: set(files) for s, files in kept.items()}


@pytest.fixture(scope="module")
def big_upstream(nginx: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300,000 synthetic records and the demo's real packages, sharded."""
    root = nginx.root / "sharded-big"
    build_upstream(root)
    publish_sharded(root, synthetic(300_000))
    return root


def test_a_closure_reads_a_sliver_of_a_large_sharded_upstream(
    nginx: Server, big_upstream: Path, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", f"{nginx.url}/{big_upstream.name}", str(mirror), INCLUDE)
    dry = json.loads(ferry("-q", "sync", str(job), "--dry-run", "--json", "-").output)
    whole = (big_upstream / "linux-64/repodata.json").stat().st_size
    read = {s["subdir"]: s["repodata"] for s in dry["subdirs"]}
    assert read["linux-64"]["via"] == shards.INDEX_NAME
    assert read["linux-64"]["bytes"] < 0.02 * whole, (read, whole)

    start = log_length(nginx)
    result = ferry("sync", str(job))
    assert result.exit_code == 0, result.output
    fetched = requests(nginx, start, big_upstream.name)
    assert not any("/repodata.json" in line for line in fetched)
    want = expected(big_upstream, INCLUDE)
    for subdir in ("linux-64", "noarch"):
        mirrored = records(mirror / subdir / "repodata.json")
        assert set(mirrored) == want[subdir]
        upstream = records(big_upstream / subdir / "repodata.json")
        assert all(mirrored[f] == upstream[f] for f in mirrored)  # verbatim, hex digests

    start = log_length(nginx)
    assert ferry("sync", str(job)).exit_code == 0
    again = requests(nginx, start, big_upstream.name)
    assert len(again) == 2 and all(" 304 " in line and shards.INDEX_NAME in line for line in again)


def test_a_changed_shard_is_fetched_again_and_only_it(nginx: Server, tmp_path: Path) -> None:
    root = nginx.root / f"sharded-{tmp_path.name[-20:]}"
    build_upstream(root)
    publish_sharded(root)
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", f"{nginx.url}/{root.name}", str(mirror), INCLUDE)
    assert ferry("sync", str(job)).exit_code == 0
    cached = {p.name for p in (mirror / ".ferry/shard-cache").iterdir()}
    assert len(cached) == 4  # the closure's: pngtool, libpng, zlib, demo-data
    explained = ferry("sync", str(job), "--explain", "gpltool")  # outside the closure
    assert explained.exit_code == 0 and "drop linux-64/gpltool-1.0-h3_0.conda" in explained.output

    document = load(root / "linux-64/repodata.json")
    document["packages.conda"]["libpng-1.6.43-h1_0.conda"]["depends"] = ["zlib >=1.3.1,<1.3.2"]
    with open_gateway(str(root)) as gateway:
        publish_subdir(gateway, "linux-64", document, OutputOptions(jlap=False))
    later = time.time() + 5  # nginx's ETag is mtime and size: same second, same size
    os.utime(root / "linux-64" / shards.INDEX_NAME, (later, later))
    index = msgpack.unpackb(_unzst((root / "linux-64" / shards.INDEX_NAME).read_bytes()))["shards"]
    start = log_length(nginx)
    assert ferry("sync", str(job)).exit_code == 0
    shard_requests = [line for line in requests(nginx, start, root.name) if "/shards/" in line]
    assert len(shard_requests) == 1 and index["libpng"].hex() in shard_requests[0]
    now_cached = {p.name for p in (mirror / ".ferry/shard-cache").iterdir()}
    assert len(now_cached) == 4 and f"{index['libpng'].hex()}.msgpack.zst" in now_cached
    assert records(mirror / "linux-64/repodata.json")["libpng-1.6.43-h1_0.conda"]["depends"] == [
        "zlib >=1.3.1,<1.3.2"
    ]


def _unzst(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 26)


def _zst_without_size(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=False).compress(data)


def test_what_servers_really_publish_is_read(nginx: Server, tmp_path: Path) -> None:
    """Frames without a content size, a shards_base_url elsewhere and without its
    trailing slash, digests as arrays of byte values."""
    root = nginx.root / f"sharded-odd-{tmp_path.name[-16:]}"
    build_upstream(root)
    publish_sharded(root)
    for subdir in ("linux-64", "noarch"):
        folder = root / subdir
        (folder / "elsewhere").mkdir()
        raw = msgpack.unpackb(_unzst((folder / shards.INDEX_NAME).read_bytes()))
        digests = {}
        for name, digest in raw["shards"].items():
            old = folder / shards.shard_path(digest.hex())
            framed = _zst_without_size(_unzst(old.read_bytes()))
            new = hashlib.sha256(framed).digest()
            (folder / "elsewhere" / f"{new.hex()}.msgpack.zst").write_bytes(framed)
            digests[name] = list(new)  # an array of byte values, not msgpack binary
        for old in (folder / "shards").iterdir():
            old.unlink()
        index = {
            "version": 1,
            "info": {**raw["info"], "shards_base_url": "./elsewhere"},
            "shards": digests,
        }
        packed = msgpack.packb(index, use_bin_type=True)
        (folder / shards.INDEX_NAME).write_bytes(_zst_without_size(packed))
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", f"{nginx.url}/{root.name}", str(mirror), INCLUDE)
    result = ferry("sync", str(job))
    assert result.exit_code == 0, result.output
    want = expected(root, INCLUDE)
    for subdir in ("linux-64", "noarch"):
        assert set(records(mirror / subdir / "repodata.json")) == want[subdir]


def test_unsharded_or_unnamed_jobs_read_the_whole_repodata(nginx: Server, tmp_path: Path) -> None:
    root = nginx.root / f"sharded-x-{tmp_path.name[-16:]}"
    build_upstream(root)
    publish_sharded(root)
    mirror = tmp_path / "mirror"
    job = job_yaml(
        tmp_path / "job.yaml",
        f"{nginx.url}/{root.name}",
        str(mirror),
        "filters: {exclude: [gpl*]}\n",
    )
    dry = json.loads(ferry("-q", "sync", str(job), "--dry-run", "--json", "-").output)
    assert {s["repodata"]["via"] for s in dry["subdirs"]} == {"repodata.json.zst"}
    assert orjson.loads((root / "linux-64/repodata.json").read_bytes())


def test_a_shard_index_keyed_by_a_map_is_refused_in_one_line(tmp_path: Path) -> None:
    """msgpack allows a map as a map's key; Python cannot hash one (found by the fuzzer)."""
    from conda_ferry.mirror import errors, sharded

    (tmp_path / "linux-64").mkdir()
    hostile = zstandard.ZstdCompressor().compress(b"\x81\x81\x01\x02\x03")  # {{1: 2}: 3}
    (tmp_path / "linux-64" / shards.INDEX_NAME).write_bytes(hostile)
    with open_gateway(str(tmp_path)) as gateway, pytest.raises(errors.FerryError) as caught:
        sharded.fetch_index(gateway, "linux-64")
    assert "not a zstd-compressed msgpack document" in str(caught.value)


def test_a_mirror_builds_again_only_the_shards_of_names_that_changed(tmp_path: Path) -> None:
    """The state keeps each name's shard key: the next run takes the shards of
    unchanged names from it (a conda-forge subdir's 30,000 builds, most nights), and
    what it publishes is what building every shard gives. A shard deleted behind
    its back, or a key that the state no longer holds right, is built again."""
    upstream, mirror = tmp_path / "up", tmp_path / "mirror"
    build_upstream(upstream)
    job = job_yaml(tmp_path / "job.yaml", str(upstream), str(mirror))
    subdir = mirror / "linux-64"

    def hot_fix(filename: str) -> None:
        document = load(upstream / "linux-64/repodata.json")
        record = document["packages.conda"].get(filename) or document["packages"][filename]
        record["depends"] = [*record.get("depends", []), "hot-fixed"]
        with open_gateway(str(upstream)) as gateway:
            publish_subdir(gateway, "linux-64", document, OutputOptions(jlap=False))

    def index() -> dict[str, bytes]:
        shard_index = msgpack.unpackb(_unzst((subdir / shards.INDEX_NAME).read_bytes()))
        full, _, _ = shards.build(load(subdir / "repodata.json"))
        assert shard_index["shards"] == msgpack.unpackb(_unzst(full))["shards"]
        for digest in shard_index["shards"].values():
            assert (subdir / shards.shard_path(digest.hex())).is_file()
        return dict(shard_index["shards"])

    assert ferry("sync", str(job)).exit_code == 0
    before = index()
    state = json.loads((mirror / ".ferry/linux-64.json").read_bytes())
    assert set(state["shards"]) == set(before)
    files = set(records(subdir / "repodata.json"))
    libpng = next(f for f in files if f.startswith("libpng-"))
    hot_fix(libpng)
    written = {p.name for p in (subdir / "shards").iterdir()}
    assert ferry("sync", str(job)).exit_code == 0
    after = index()
    assert {n for n in after if after[n] != before[n]} == {"libpng"}
    assert {p.name for p in (subdir / "shards").iterdir()} - written == {
        f"{after['libpng'].hex()}.msgpack.zst"
    }

    (subdir / shards.shard_path(after["zlib"].hex())).unlink()
    state = json.loads((mirror / ".ferry/linux-64.json").read_bytes())
    state["shards"]["pngtool"] = "not a key " + "0" * 64
    (mirror / ".ferry/linux-64.json").write_text(json.dumps(state))
    hot_fix(libpng)
    assert ferry("sync", str(job)).exit_code == 0
    assert index()["zlib"] == after["zlib"]


def test_a_shard_is_built_again_only_when_its_records_changed() -> None:
    document = {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": synthetic(200)}
    index, built, keys = shards.build(document)
    assert len(built) == len(keys) == 10
    assert shards.build(document, keys) == (index, {}, keys)  # nothing built again
    changed = next(iter(document["packages.conda"].values()))
    changed["depends"] = ["hot-fixed"]
    again, rebuilt, new_keys = shards.build(document, keys)
    assert {n for n in keys if keys[n] != new_keys[n]} == {changed["name"]}
    whole, every, whole_keys = shards.build(document)
    assert (again, new_keys) == (whole, whole_keys)  # as if built whole
    assert len(rebuilt) == 1 and rebuilt.items() <= every.items()
