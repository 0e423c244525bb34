"""Fuzzers for everything ferry reads from outside: packages, upstream repodata,
bundle manifests, lockfiles, sharded repodata, HTTP, SFTP (reads, and a whole lying
server), FTP and S3 answers, the command line and job files, and what ferry reads
back of its own (a mirror damaged behind its back). Each runs for a time budget
and reports how many inputs it tried.

Run in a child process with a memory ceiling (see test_fuzz.py), so "allocates more
than a bound" fails as loudly as a wrong exception type:
``python -m tests.fuzzing packages 5``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import msgpack
import msgspec
import orjson
import yaml
import zstandard
from click.testing import CliRunner

from conda_ferry.gateways import (
    GatewayError,
    GatewayOptions,
    ProtocolError,
    expansion_limit,
    is_temp,
    open_gateway,
)
from conda_ferry.gateways.curl import parse_head
from conda_ferry.gateways.httpdate import http_date
from conda_ferry.gateways.inflate import Inflating
from conda_ferry.gateways.sftpreads import read_size
from conda_ferry.index import channeldata, compact, repodata, shards
from conda_ferry.index.channel import ChannelEntry
from conda_ferry.index.package import BadPackage, read_package
from conda_ferry.index.publish import OutputOptions, publish_subdir
from conda_ferry.index.records import record_from_package, record_problem
from conda_ferry.mirror import bundle, errors, lockfiles, pages, sharded, snapshots, sync, upstream
from conda_ferry.mirror.cli import main
from conda_ferry.mirror.filters import Filters, Selector
from conda_ferry.mirror.plan import make_plan
from conda_ferry.mirror.state import sweep_temps
from tests import sftpliar
from tests.pkgmaker import DEMO, Spec, package_bytes
from tests.sftppeer import Behaviour, Peer

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED = ROOT.parent / "shared" / "data" / "packages"
WEIRD: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    1e308,
    float("nan"),
    "",
    "abc",
    "../x",
    "1..x y",
    "python >=3",
    "\x00",
    "é" * 300,
    [],
    ["a", 1],
    {},
    {"a": []},
]


def _weird(rng: random.Random) -> Any:
    """One of WEIRD, a fresh copy: shared containers would make cycles when mutated."""
    return copy.deepcopy(rng.choice(WEIRD))


AT_LEAST = 11  # inputs every fuzzer tries, however slow the machine (CI once ran 8)


def _deadline(seconds: float) -> Iterator[int]:
    """Counts 1, 2, ... until the time is up, and to :data:`AT_LEAST` at least."""
    end, count = time.monotonic() + seconds, 0
    while count < AT_LEAST or time.monotonic() < end:
        count += 1
        yield count


def _seeds() -> list[tuple[str, bytes]]:
    seeds = [(f"{s.stem}{fmt}", package_bytes(s, fmt)) for s, fmt in DEMO]
    seeds.append(("big-1.0-0.conda", package_bytes(Spec("big", files={"a": b"x" * 100_000}))))
    if SHARED.is_dir():
        for path in sorted(SHARED.rglob("*"))[:200]:
            if path.name.endswith((".conda", ".tar.bz2")) and path.stat().st_size < 2 << 20:
                seeds.append((path.name, path.read_bytes()))
    return seeds


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            break
        at = rng.randrange(len(out))
        kind = rng.randrange(5)
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del out[at:]
        elif kind == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 64))
        elif kind == 3:
            end = min(len(out), at + rng.randint(1, 4096))
            out[at:at] = out[at:end] * rng.randint(1, 4)
        else:  # a size or count field turned huge
            out[at : at + 4] = b"\xff\xff\xff\x7f"
    return bytes(out)


class _Dribbling(io.RawIOBase):
    """Hands out a random part of what is asked for, as a network stream may."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        self._data, self._at, self._rng = data, 0, rng

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = len(self._data) if size is None or size < 0 else size
        piece = self._data[self._at : self._at + self._rng.randint(min(1, want), want)]
        self._at += len(piece)
        return piece


def _package_outcome(name: str, stream: Any) -> Any:
    try:
        return record_from_package(read_package(name, stream))
    except BadPackage as exc:
        return str(exc)


def fuzz_packages(seconds: float, seed: int) -> int:
    """Mutated real packages through the reader and the record maker: BadPackage only,
    and the same outcome whether the bytes come whole or in random short reads."""
    rng = random.Random(seed)
    seeds = _seeds()
    count = 0
    for count in _deadline(seconds):
        name, data = rng.choice(seeds)
        damaged = _mutate(rng, data)
        whole = _package_outcome(name, io.BytesIO(damaged))
        if count % 8 == 0:
            assert _package_outcome(name, _Dribbling(damaged, rng)) == whole, name
    return count


def _record(rng: random.Random, base: dict[str, Any]) -> Any:
    record = copy.deepcopy(base)
    if rng.random() < 0.05:
        return _weird(rng)
    for _ in range(rng.randint(0, 4)):
        key = rng.choice([*record, "size", "sha256", "depends", "timestamp", "license", "x"])
        if rng.random() < 0.2:
            record.pop(key, None)
        else:
            record[key] = _weird(rng)
    return record


def _document(rng: random.Random, base: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {"info": {"subdir": "linux-64"}, "packages": {}}
    conda: dict[str, Any] = {}
    for filename, record in base.items():
        name = filename if rng.random() > 0.05 else rng.choice(["../a.conda", "/x.conda", 7])
        conda[str(name)] = _record(rng, record)
    document["packages.conda"] = conda if rng.random() > 0.03 else _weird(rng)
    if rng.random() < 0.1:
        document["info"] = rng.choice([*WEIRD, {"base_url": rng.choice([*WEIRD, "file:///"])}])
    return document


FILTERS = [
    {},
    {"include": ["zlib", "pngtool >=2"], "dependencies": True},
    {"latest": 1, "licenses": {"deny": ["GPL-*"]}, "max_size": "1MB"},
    {"after": "2023-01-01", "before": "2030-01-01", "exclude": ["*-dbg"]},
]


def _agrees(record: Any) -> None:
    """The compact reader judges a record as ``record_problem`` does, and reads back
    what the record says."""
    try:
        data = orjson.dumps(record)
    except TypeError:  # beyond JSON's 64-bit integers: refused by the reader, fine
        return
    record = orjson.loads(data)  # what the JSON says (a NaN is null there)
    raw = msgspec.Raw(data)
    fit, problem = compact.Checker()(raw)
    assert (problem is None) == (record_problem(record) is None), (record, problem)
    if fit is not None:
        assert fit == record and compact.plain(fit) == record
        keys = tuple({*record, *compact.FIELDS, "name", "size", "x"})
        for key in keys:
            assert fit.get(key) == record.get(key), key
        assert compact.fields(fit, keys) == tuple(record.get(k) for k in keys)


def fuzz_records(seconds: float, seed: int) -> int:
    """Hostile repodata documents, as JSON or as bytes mutated from it, through sync's
    parsing, the filters, the plan and the base_url rule: FerryError only."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from tests.upstream import build_upstream

        build_upstream(root)
        base = json.loads((root / "linux-64" / "repodata.json").read_bytes())["packages.conda"]
        count = 0
        for count in _deadline(seconds):  # noqa: B007 - the last count is the result
            document = _document(rng, base)
            conda = document["packages.conda"]
            for record in conda.values() if isinstance(conda, dict) else ():
                _agrees(record)
            data = json.dumps(document).encode()
            if rng.random() < 0.3:
                data = _mutate(rng, data)
            try:
                parsed = upstream.parse(data, "fuzz")
                records, _ = sync._records(parsed, "fuzz")
                filters = Filters.parse(rng.choice(FILTERS))
                selection = Selector(filters).select({"linux-64": records, "noarch": {}})
                kept = selection.kept.get("linux-64", {})
                make_plan("linux-64", kept, base, {f: 1 for f in base}, set(base), True)
                info = parsed.get("info")
                if isinstance(info, dict) and "base_url" in info:
                    upstream.package_location(str(root), "linux-64", info["base_url"], ())
            except errors.FerryError:
                pass
    return count


def _json_mutant(rng: random.Random, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with a few values deleted, turned into paths that leave, or weird."""
    mutant = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        target: Any = mutant
        path: list[Any] = []
        while isinstance(target, (dict, list)) and target and rng.random() < 0.7:
            key = rng.choice(list(target) if isinstance(target, dict) else range(len(target)))
            path.append(key)
            target = target[key]
        if not path:
            continue
        parent = mutant
        for key in path[:-1]:
            parent = parent[key]
        choice = rng.random()
        if choice < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        elif choice < 0.4 and isinstance(target, str):
            parent[path[-1]] = rng.choice(["../" + target, "/" + target, target + "/../..", ""])
        elif choice < 0.5 and isinstance(target, int):
            parent[path[-1]] = target + rng.choice([-1, 1, 2**40])
        else:
            parent[path[-1]] = _weird(rng)
    return mutant


def _mirror_and_bundle(mirror_dir: Path, bundle_dir: Path) -> None:
    """A small mirror with a snapshot (a manifest carries it), and a full bundle of it."""
    from tests.upstream import build_upstream

    build_upstream(mirror_dir)
    with open_gateway(str(mirror_dir)) as mirror:
        snapshots.create(mirror, "fz")
        bundle.export_bundle(mirror, str(bundle_dir), None, True, None, 1 << 20, None)


def fuzz_manifests(seconds: float, seed: int) -> int:
    """Generated manifests through bundle import: FerryError or GatewayError only,
    and nothing written outside the target."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _mirror_and_bundle(root / "mirror", root / "b")
        original = json.loads((root / "b" / bundle.MANIFEST).read_bytes())
        count = 0
        for count in _deadline(seconds):
            mutant = _json_mutant(rng, original)
            (root / "b" / bundle.MANIFEST).write_text(json.dumps(mutant))
            target = root / "targets" / str(count)
            try:
                with open_gateway(str(root / "b")) as src, open_gateway(str(target)) as dst:
                    bundle.import_bundle(src, dst, None, allow_gap=True)
            except (errors.FerryError, GatewayError):
                pass
            outside = [p for p in root.rglob("*") if not _inside(p, root)]
            assert not outside, outside
    return count


def fuzz_descriptions(seconds: float, seed: int) -> int:
    """What an upstream says of its packages beyond repodata (channeldata.json, each
    subdir's run_exports.json), mutated or cut, read ahead in a thread as a sync reads
    it, into the mirror's channeldata, run_exports and pages: never an exception; a
    document that is not one is not used."""
    rng = random.Random(seed)
    demo, subdirs = ROOT / "configs" / "demo-channel", ("linux-64", "noarch")
    about = json.loads((demo / "channeldata.json").read_bytes())
    records = {
        s: repodata.records(json.loads((demo / s / "repodata.json").read_bytes())) for s in subdirs
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        count = 0
        for count in _deadline(seconds):
            files = {"channeldata.json": _json_mutant(rng, about)}
            for subdir, kept in records.items():
                files[f"{subdir}/run_exports.json"] = _json_mutant(
                    rng,
                    {
                        "packages.conda": {
                            f: {"run_exports": {"weak": [f"x >={count}"]}} for f in kept
                        }
                    },
                )
            for path, document in files.items():
                data = json.dumps(document).encode()
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(_mutate(rng, data) if rng.random() < 0.3 else data)
            opener = functools.partial(open_gateway, str(root))
            with open_gateway(str(root)) as source:
                described = upstream.Descriptions(source, upstream.ReadAhead(opener, list(files)))
                entries = [
                    (s, f, r, extra)
                    for s, kept in records.items()
                    for f, extra in described.extras(s, kept).items()
                    for r in [kept[f]]
                ]
            repodata.dumps(channeldata.channeldata(list(subdirs), entries))
            for subdir in subdirs:
                exports = {f: x["run_exports"] for s, f, _, x in entries if s == subdir}
                repodata.dumps(channeldata.run_exports_document(subdir, exports))
                listed = [ChannelEntry(s, f, r, x) for s, f, r, x in entries if s == subdir]
                packages = pages.group(listed)
                for package in packages:
                    pages.package_page(subdir, package)
                list(pages.listing_pages(subdir, [pages.Rows.of(packages)]))
    return count


def _packed(value: Any) -> bytes | None:
    """msgpack in zstd, as servers publish shards; None for what msgpack cannot hold."""
    try:
        return zstandard.ZstdCompressor().compress(msgpack.packb(value, use_bin_type=True))
    except (OverflowError, TypeError, ValueError):
        return None


def fuzz_shards(seconds: float, seed: int) -> int:
    """Damaged shard indexes and shards, bytes or structure (a shard re-hashed so it
    passes its digest check), through the sharded reader, the closure and sync's
    record checks: FerryError or GatewayError only."""
    from tests.upstream import build_upstream

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_upstream(root)
        with open_gateway(str(root)) as gateway:
            for subdir in ("linux-64", "noarch"):
                document = json.loads((root / subdir / "repodata.json").read_bytes())
                publish_subdir(gateway, subdir, document, OutputOptions(jlap=False))
        index_path = root / "linux-64" / shards.INDEX_NAME
        pristine = {p: p.read_bytes() for p in (root / "linux-64").rglob("*.msgpack.zst")}
        index = msgpack.unpackb(repodata.unzst(pristine[index_path]))
        filters = Filters.parse({"include": ["pngtool"], "dependencies": True})
        count = 0
        for count in _deadline(seconds):  # noqa: B007 - the last count is the result
            for path, data in pristine.items():
                path.write_bytes(data)
            choice = rng.random()
            if choice < 0.3:
                index_path.write_bytes(_mutate(rng, pristine[index_path]))
            elif choice < 0.6:
                packed = _packed(_json_mutant(rng, index))
                if packed is not None:
                    index_path.write_bytes(packed)
            else:
                name = rng.choice(sorted(index["shards"]))
                old = root / "linux-64" / shards.shard_path(index["shards"][name].hex())
                shard = _json_mutant(rng, msgpack.unpackb(repodata.unzst(old.read_bytes())))
                packed = _packed(shard)
                if packed is not None:
                    digest = hashlib.sha256(packed).digest()
                    (root / "linux-64" / shards.shard_path(digest.hex())).write_bytes(packed)
                    moved = {**index, "shards": {**index["shards"], name: digest}}
                    index_path.write_bytes(_packed(moved) or b"")
            try:
                with open_gateway(str(root)) as source, contextlib.ExitStack() as stack:
                    found = sharded.read_index(source, "linux-64")
                    reader = sharded.ShardReader(source, None, found, GatewayOptions(), (), stack)
                    fetched = sharded.closure({"linux-64": reader}, {}, filters, 2)
                    sync._records(fetched.documents["linux-64"], "fuzz")
            except (errors.FerryError, GatewayError):
                pass
    return count


LOCKS = {
    "pixi.lock": """version: 6
environments:
  default:
    channels:
    - url: https://conda.anaconda.org/conda-forge/
    packages:
      linux-64:
      - conda: https://conda.anaconda.org/conda-forge/linux-64/zlib-1.3.1-h0_0.conda
packages:
- conda: https://conda.anaconda.org/conda-forge/linux-64/zlib-1.3.1-h0_0.conda
  sha256: 0077b9e4dd6d532fcd43129cbabe20c13c6453227d64500d3fa57751c50d6029
  md5: 6fee544d41aefea80c4c72a24a90c2e4
  depends:
  - libgcc >=13
""",
    "conda-lock.yml": """version: 1
metadata: {platforms: [linux-64]}
package:
- name: zlib
  version: 1.3.1
  manager: conda
  platform: linux-64
  url: https://conda.anaconda.org/conda-forge/linux-64/zlib-1.3.1-h0_0.conda
  hash: {md5: 6fee544d41aefea80c4c72a24a90c2e4}
""",
    "env.txt": """# platform: linux-64
@EXPLICIT
https://conda.anaconda.org/conda-forge/linux-64/zlib-1.3.1-h0_0.conda#6fee544d41aefea80c4c72a24a90c2e4
""",
}


def fuzz_lockfiles(seconds: float, seed: int) -> int:
    """Mutated lockfiles of each form: LockfileError only (a user's file gets one
    line naming it, never a traceback)."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        count = 0
        for count in _deadline(seconds):
            name = sorted(LOCKS)[count % len(LOCKS)]  # each form in turn
            path = Path(tmp) / name
            path.write_bytes(_mutate(rng, LOCKS[name].encode()))
            with contextlib.suppress(lockfiles.LockfileError):
                lockfiles.read_lockfile(path)
    return count


def fuzz_jobs(seconds: float, seed: int) -> int:
    """Mutated job files (the bundled examples') through the job reader: a job or a
    ConfigError, and the same again from the parse it keeps, and again once that is
    damaged (parsed anew, never taken for another job)."""
    from conda_ferry.mirror.config import load_job
    from conda_ferry.mirror.errors import ConfigError

    examples = [p.read_bytes() for p in sorted((ROOT / "configs").glob("*.yaml"))]
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        kept = Path(tmp) / "cache" / "conda-ferry" / "jobs"
        job = Path(tmp) / "job.yaml"

        def read() -> str:
            try:
                return repr(load_job(str(job)))
            except ConfigError as exc:
                return str(exc)

        count = 0
        for count in _deadline(seconds):
            job.write_bytes(_mutate(rng, examples[count % len(examples)]))
            first = read()
            assert read() == first, job.read_bytes()
            for path in kept.glob("*.msgpack"):
                path.write_bytes(_mutate(rng, path.read_bytes()))
            assert read() == first, job.read_bytes()
            shutil.rmtree(kept, ignore_errors=True)
    return count


def _bodies() -> list[bytes]:
    """What servers send as a gzip Content-Encoding: one member, several (as some
    proxies do), zlib ("deflate"), and a bomb."""
    text = json.dumps({"packages": {f"p{i}.conda": {"name": f"p{i}"} for i in range(50)}})
    one = gzip.compress(text.encode())
    bomb = gzip.compress(b" " * (16 << 20), 9) * 16  # 256 MB from a few hundred kB
    return [one, one * 3, zlib.compress(text.encode()), bomb]


def fuzz_bodies(seconds: float, seed: int) -> int:
    """Lying HTTP answers: damaged gzip bodies through the inflater (ProtocolError or
    EOFError only, never more output than the expansion cap), and damaged header lines
    through the transport's parser, and damaged dates through the date reader."""
    rng = random.Random(seed)
    seeds = _bodies()
    lines = [b"HTTP/1.1 200 OK\r\n", b'ETag: "x"\r\n', b"Content-Length: 12\r\n", b"\r\n"]
    count = 0
    for count in _deadline(seconds):  # noqa: B007 - the last count is the result
        body = _mutate(rng, rng.choice(seeds))
        source = io.BytesIO(body)
        reader = Inflating(source.read, source.close, "https://fuzz/repodata.json")
        out = 0
        with contextlib.suppress(ProtocolError, EOFError):
            while chunk := reader.read(1 << 20):
                out += len(chunk)
        assert out <= expansion_limit(len(body)), (out, len(body))
        status, headers, _ = parse_head(
            [_mutate(rng, rng.choice(lines)) for _ in range(rng.randint(1, 8))]
        )
        assert isinstance(status, int) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        )
        date = _mutate(rng, b"Sun, 06 Nov 1994 08:49:37 GMT").decode("latin-1")
        assert isinstance(http_date(date), float | None)
    return count


def _sftp_read(rng: random.Random, data: bytes, how: Behaviour, offset: int) -> bytes:
    peer = Peer(data, how, rng.randrange(1 << 30))
    peer.sock.settimeout(10)  # a hang fails the fuzzer, as a TimeoutError
    try:
        return peer.fetch(offset, read_size(peer.sock), lambda: rng.choice([1, 1000, 1 << 20]))
    finally:
        peer.close()


def fuzz_sftp(seconds: float, seed: int) -> int:
    """SFTP answers through the pipelined reader: whatever the draft allows gives the
    file's bytes; a failing or lying server gives an OSError or EOFError only, never a
    hang or a read beyond what was asked."""
    rng = random.Random(seed)
    count = 0
    for count in _deadline(seconds):  # noqa: B007 - the last count is the result
        data = rng.randbytes(rng.choice([0, 1, 5000, 50_000]))
        offset = rng.randint(0, len(data))
        how = Behaviour(
            short=rng.random() < 0.5,
            shuffle=rng.random() < 0.5,
            cut=rng.choice([None, rng.randint(0, len(data))]),
            most_read=rng.choice([None, 0, 512, 4096, 1 << 40]),
            fail_at=rng.choice([None, rng.randint(1, 20)]),
            fail_code=rng.choice([2, 3, 4, 99]),
        )
        if rng.random() < 0.5:
            how.lie_at = rng.randint(1, 10)
            how.damage = functools.partial(_mutate, random.Random(rng.random()))
        try:
            got = _sftp_read(rng, data, how, offset)
        except TimeoutError:
            raise AssertionError(f"the reader hung on {how}") from None
        except (OSError, EOFError):
            assert how.lie_at is not None or how.fail_at is not None, how
            continue
        assert len(got) <= len(data) - offset, how
        if how.lie_at is None and how.fail_at is None:
            assert got == data[offset : how.cut if how.cut is not None else len(data)], how
    return count


def _lying_answer(rng: random.Random, body: bytes) -> bytes:
    """An HTTP answer to a GET of ``body``: often right, else a wrong status, damaged
    or longer bytes, a Content-Length that lies, an encoding, a redirect to nowhere,
    or a cut anywhere."""
    status = rng.choice([b"200 OK"] * 6 + [b"404 No", b"503 Busy", b"206 Part", b"302 Go", b"99"])
    data = body
    if rng.random() < 0.2:
        data = _mutate(rng, body)
    elif rng.random() < 0.1:
        data = body + rng.randbytes(rng.randint(1, 5000))
    length = len(data)
    if rng.random() < 0.2:
        length = rng.choice([0, len(body), len(data) + 10, len(data) // 2])
    head = [b"HTTP/1.1 " + status, b"Content-Length: %d" % length, b"Connection: close"]
    if rng.random() < 0.1:
        head.append(b"Content-Encoding: gzip")
    if rng.random() < 0.1:
        head.append(b"Location: http://127.0.0.1:1/gone")
    answer = b"\r\n".join(head) + b"\r\n\r\n" + data
    return answer[: rng.randrange(len(answer))] if rng.random() < 0.15 else answer


def fuzz_answers(seconds: float, seed: int) -> int:
    """Lying HTTP answers to package downloads, from a real socket through libcurl:
    the short way for small files (copy_prefetched) writes a file only with exactly
    the record's bytes, else leaves it to copy_file, which ends right or with a
    GatewayError; nothing else escapes, nothing wrong is ever named."""
    from conda_ferry.gateways import Expected, copy_file, copy_prefetched

    rng = random.Random(seed)
    body = rng.randbytes(30_000)
    expect = Expected(len(body), hashlib.sha256(body).hexdigest())
    answers = random.Random(seed + 1)

    def answer(conn: Any) -> None:
        request = b""
        while b"\r\n\r\n" not in request and (more := conn.recv(4096)):
            request += more
        conn.sendall(_lying_answer(answers, body))

    options = GatewayOptions(timeout=1, retries=2, retry_delay=0, min_rate=0)
    count = 0
    with (
        _scripted_server(answer) as port,
        tempfile.TemporaryDirectory() as tmp,
        open_gateway(f"http://127.0.0.1:{port}", options) as source,
        open_gateway(tmp) as target,
    ):
        for count in _deadline(seconds):
            path = f"p{count}.conda"
            source.prefetch(["pkg.conda"])
            copied = copy_prefetched(source, "pkg.conda", target, path, expect, False)
            if copied is None:
                with contextlib.suppress(GatewayError):
                    copied = copy_file(source, "pkg.conda", target, path, expect)
            written = Path(tmp) / path
            assert not written.exists() or written.read_bytes() == body
            assert copied is None or (written.exists() and copied.sha256 == expect.sha256)
    return count


@contextlib.contextmanager
def _scripted_server(answer: Callable[[Any], None]) -> Iterator[int]:
    """A server on loopback that hands each connection to ``answer``; yields its port."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


# -- a lying FTP server: control answers, listings and bodies ---------------------------
_FTP_LISTINGS = [
    b"type=file;size=30000;modify=20240101000000; pkg.conda",
    b"type=dir;modify=20240101000000; sub",
    b"type=cdir; .",
    b"-rw-r--r--   1 u g   30000 Jan  1 00:00 pkg.conda",
    b"drwxr-xr-x   2 u g    4096 Jan  1 00:00 sub",
    b"type=file;size=1; ../evil.conda",
    b"type=file;size=-5; a/b.conda",
    b"-rw-r--r--   1 u g   1 Jan  1 00:00 ../x.conda",
    b"type=file;size=99999999999999999999999; big.conda",
]


def _ftp_reply(rng: random.Random, right: bytes) -> bytes:
    """The right answer mostly, else another code, garbage, bytes that are not UTF-8,
    a line too long, or a multi-line answer that never ends."""
    roll = rng.random()
    if roll < 0.75:
        return right
    return rng.choice(
        [
            b"550 no",
            b"550 \x1b[2Jred",
            b"421 closing",
            b"999 what",
            b"abc",
            b"",
            b"213 \xff\xfe",
            b"213 " + b"9" * 5000,
            b"213-more\r\n213-",
            right[:3] + b" " + rng.randbytes(8),
            b"227 Entering Passive Mode (1,2,3)",
        ]
    )


def _ftp_inside(path: bytes) -> bool:
    """Whether a path a write names lies inside the fuzzed root ``/root``."""
    return path.startswith(b"/root/") and not {b"", b".", b".."} & set(path[6:].split(b"/"))


def _ftp_peer(rng: random.Random, conn: Any, body: bytes, escapes: list[bytes]) -> None:
    """One control connection, answered as a lying server would; data connections
    through PASV, each carrying a listing or a body, or taking a STOR's bytes, right or
    not. Each write (STOR, RNFR, RNTO, DELE, MKD) that names a path outside the root
    is added to ``escapes``."""
    import socket

    data_server: socket.socket | None = None
    sizes: dict[bytes, int] = {}  # what this connection stored, and renamed
    renaming = b""

    def send(line: bytes) -> None:
        conn.sendall(line + b"\r\n")

    try:
        send(_ftp_reply(rng, b"220 fz"))
        reader = conn.makefile("rb")
        while line := reader.readline(8192):
            verb = line.split(b" ", 1)[0].strip().upper()
            argument = line[len(verb) :].strip()
            if verb == b"QUIT":
                send(b"221 bye")
                return
            if verb in (b"PASV", b"EPSV"):
                data_server = socket.create_server(("127.0.0.1", 0))
                data_server.settimeout(2)
                port = data_server.getsockname()[1]
                right = b"227 Entering Passive Mode (127,0,0,1,%d,%d)" % (port >> 8, port & 255)
                if verb == b"EPSV":
                    right = b"229 Entering Extended Passive Mode (|||%d|)" % port
                send(_ftp_reply(rng, right))
            elif verb in (b"STOR", b"RNFR", b"RNTO", b"DELE", b"MKD") and not (
                _ftp_inside(argument) or (verb == b"MKD" and argument == b"/root")
            ):
                escapes.append(line)
                send(b"553 not there")
            elif verb == b"STOR" and data_server is not None:
                send(_ftp_reply(rng, b"150 send"))
                with contextlib.suppress(OSError):
                    data, _ = data_server.accept()
                    with data:
                        sizes[argument] = 0
                        while more := data.recv(65536):
                            sizes[argument] += len(more)
                data_server.close()
                data_server = None
                send(_ftp_reply(rng, rng.choice([b"226 stored"] * 4 + [b"452 disk full"])))
            elif verb in (b"MLSD", b"LIST", b"RETR") and data_server is not None:
                send(_ftp_reply(rng, b"150 here"))
                with contextlib.suppress(OSError):
                    data, _ = data_server.accept()
                    with data:
                        if verb == b"RETR":
                            payload = body if rng.random() < 0.7 else _mutate(rng, body)
                        else:
                            lines = rng.sample(_FTP_LISTINGS, rng.randint(0, 4))
                            payload = b"\r\n".join(
                                _mutate(rng, x) if rng.random() < 0.3 else x for x in lines
                            )
                        data.sendall(payload)
                data_server.close()
                data_server = None
                send(_ftp_reply(rng, b"226 done"))
            else:
                if verb == b"RNFR":
                    renaming = argument
                elif verb == b"RNTO" and renaming in sizes:
                    sizes[argument] = sizes.pop(renaming)
                size = len(body) if b"pkg" in argument else sizes.get(argument)
                right = {
                    b"USER": b"331 password",
                    b"PASS": b"230 in",
                    b"TYPE": b"200 ok",
                    b"SIZE": b"550 no" if size is None else b"213 %d" % size,
                    b"MDTM": b"213 20240101000000",
                    b"CWD": b"250 ok" if b"pkg" not in argument else b"550 no",
                    b"REST": b"350 ok",
                    b"RNFR": b"350 go on",
                    b"RNTO": b"250 renamed",
                    b"DELE": b"250 deleted",
                    b"MKD": b'257 "%s" made' % argument,
                }.get(verb, b"502 not here")
                send(_ftp_reply(rng, right))
    finally:
        if data_server is not None:
            data_server.close()


def _lied_to(
    rng: random.Random,
    source: Any,
    target: Any,
    body: bytes,
    count: int,
    more: dict[str, Callable[[], Any]] | None = None,
) -> None:
    """One call on a gateway whose server lies (a listing, a stat, a read, a verified
    copy, or one of ``more``): it ends with a result or a GatewayError whose line is
    printable, a listing names only entries below where it looked, and a copy writes
    exactly the record's bytes or nothing, never a temp file left."""
    from conda_ferry.gateways import Expected, copy_file

    more = more or {}
    what = rng.choice(["list", "files", "info", "read", "copy", *more])
    tmp = Path(target.root)
    try:
        if what in more:
            more[what]()
        elif what in ("list", "files"):
            for entry in getattr(source, what)(rng.choice(["", "sub"])):
                assert all(p not in ("", ".", "..") for p in entry.path.split("/")), entry
                assert 0 <= entry.size < 1 << 63, entry
        elif what == "info":
            source.info(rng.choice(["pkg.conda", "sub", "none"]))
        elif what == "read":
            source.read_bytes("pkg.conda")
        else:
            path = f"p{count}.conda"
            expect = Expected(len(body), hashlib.sha256(body).hexdigest())
            copy_file(source, "pkg.conda", target, path, expect)
            assert (tmp / path).read_bytes() == body
    except GatewayError as exc:
        assert str(exc).isprintable(), exc  # one line, nothing a terminal acts on
    assert not [p for p in tmp.iterdir() if is_temp(p.name)]


def fuzz_ftp(seconds: float, seed: int) -> int:
    """A scripted FTP server that lies in its answers, listings and bodies, through the
    FTP gateway (see :func:`_lied_to`), and takes writes, deletes, locks and sweeps of
    temp files, none of which may reach outside the root."""
    rng = random.Random(seed)
    body = rng.randbytes(30_000)
    answers = random.Random(seed + 1)
    options = GatewayOptions(timeout=0.3, retries=2, retry_delay=0, min_rate=0)
    escapes: list[bytes] = []
    count = 0
    with (
        _scripted_server(lambda conn: _ftp_peer(answers, conn, body, escapes)) as port,
        tempfile.TemporaryDirectory() as tmp,
        open_gateway(tmp) as target,
    ):
        for count in _deadline(seconds):
            with open_gateway(f"ftp://127.0.0.1:{port}/root", options) as source:
                _lied_to(rng, source, target, body, count, _writes(rng, source, count))
            assert not escapes, escapes
    return count


def _writes(rng: random.Random, gateway: Any, count: int) -> dict[str, Callable[[], Any]]:
    """The calls that change a lying server's files, for :func:`_lied_to`: a write (empty,
    small or 70 kB, into new directories too), a delete, a lock taken and released, a
    sweep of temp files."""

    def write() -> None:
        data = rng.randbytes(rng.choice([0, 10, 70_000]))
        where = rng.choice(["new.conda", "sub/new.conda", f"d{count}/e/new.conda"])
        written = gateway.write_atomic(where, io.BytesIO(data))
        assert (written.path, written.size) == (where, len(data)), written

    def lock() -> None:
        with gateway.lock(rng.choice([".lock", "sub/.lock"]), ttl=60):
            pass

    return {
        "write": write,
        "delete": lambda: gateway.delete(rng.choice(["new.conda", "sub/a.conda", "x"])),
        "lock": lock,
        "sweep": lambda: sweep_temps(gateway, rng.choice(["", "sub"]), ""),
    }


def fuzz_sftpserver(seconds: float, seed: int) -> int:
    """A lying SFTP server (``tests/sftpliar.py``, started as ``ssh`` is) through the
    SFTP gateway: listings, attributes, handles, statuses and bodies, right or not
    (see :func:`_lied_to`); and writes, deletes, locks and sweeps of temp files (see
    :func:`_writes`), none of which may reach outside the root."""
    rng = random.Random(seed)
    body = rng.randbytes(30_000)
    options = GatewayOptions(timeout=0.5, retries=2, retry_delay=0, min_rate=0)
    count = 0
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as bin_dir:
        os.environ.update(sftpliar.install(Path(bin_dir), body, seed))
        escapes = Path(bin_dir) / "escapes"
        with open_gateway(tmp) as target, open_gateway("sftp://u@fz/root", options) as source:
            for count in _deadline(seconds):
                _lied_to(rng, source, target, body, count, _writes(rng, source, count))
                assert not escapes.exists(), escapes.read_text()
    return count


# -- a lying S3 server: listings, heads, bodies, errors -----------------------------
_S3_KEYS = {"p/pkg.conda": b"", "p/sub/a.conda": b"tiny"}  # pkg.conda's body set per run
_S3_WEIRD = [b"-1", b"abc", b"1e400", b"99999999999999999999999", b"", b"\xff", b"../x", b"a//b"]


def _s3_request(conn: Any) -> tuple[bytes, bytes, dict[bytes, bytes], bytes] | None:
    """One request off the socket: method, target, headers and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return None
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target = lines[0].split(b" ")[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0") or 0)
    if headers.get(b"expect") == b"100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    while len(rest) < length and (more := conn.recv(65536)):
        rest += more
    return method, target, headers, rest[:length]


def _s3_listing(rng: random.Random, query: dict[str, str], keys: dict[str, bytes]) -> bytes:
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter")
    contents, commons = [], set()
    for key, body in keys.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if delimiter and delimiter in rest:
            commons.add(prefix + rest.split(delimiter)[0] + delimiter)
            continue
        size = str(len(body)).encode()
        name = key.encode()
        if rng.random() < 0.2:
            size = rng.choice(_S3_WEIRD)
        if rng.random() < 0.1:
            name = prefix.encode() + rng.choice(_S3_WEIRD)
        contents.append(
            b"<Contents><Key>%s</Key><LastModified>%s</LastModified><ETag>&quot;e1&quot;</ETag>"
            b"<Size>%s</Size><StorageClass>STANDARD</StorageClass></Contents>"
            % (name, rng.choice([b"2024-01-01T00:00:00.000Z"] * 5 + [b"never"]), size)
        )
    truncated = rng.random() < 0.15
    token = b"<NextContinuationToken>%s</NextContinuationToken>" % rng.choice([b"t1", b"t2", b""])
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>b</Name><Prefix>%s</Prefix><KeyCount>%d</KeyCount><MaxKeys>1000</MaxKeys>"
        b"<IsTruncated>%s</IsTruncated>%s%s%s</ListBucketResult>"
        % (
            prefix.encode(),
            len(contents),
            b"true" if truncated else rng.choice([b"false", b"false", b"maybe"]),
            token if truncated and rng.random() < 0.8 else b"",
            b"".join(contents),
            b"".join(
                b"<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes>" % c.encode()
                for c in sorted(commons)
            ),
        )
    )


def _s3_error(code: bytes, status: bytes) -> tuple[bytes, list[bytes], bytes]:
    body = b"<Error><Code>%s</Code><Message>no</Message></Error>" % code
    return status, [b"Content-Type: application/xml"], body


def _s3_answer(
    rng: random.Random,
    method: bytes,
    target: bytes,
    headers: dict[bytes, bytes],
    sent: bytes,
    keys: dict[str, bytes],
) -> bytes:
    """The answer S3 would give, then lied about: another status, headers dropped or
    garbled, a damaged or cut body, a checksum that does not match; what is PUT kept,
    or less of it, what is DELETEd forgotten."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    url = urlsplit(target.decode("latin-1"))
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    key = unquote(url.path).removeprefix("/b/")
    body = keys.get(key)
    extra: list[bytes] = []
    if "list-type" in query:
        status, extra, data = (
            b"200 OK",
            [b"Content-Type: application/xml"],
            _s3_listing(rng, query, keys),
        )
    elif "uploads" in query:
        status, data = (
            b"200 OK",
            (
                b"<ListMultipartUploadsResult><Bucket>b</Bucket>"
                b"<Upload><Key>p/x</Key><UploadId>u1</UploadId><Initiated>%s</Initiated></Upload>"
                b"</ListMultipartUploadsResult>"
                % rng.choice([b"2020-01-01T00:00:00.000Z", b"soon"])
            ),
        )
    elif method == b"DELETE":
        keys.pop(key, None)
        status, data = b"204 No Content", b""
    elif method == b"PUT":
        if headers.get(b"if-none-match") == b"*" and body is not None:
            status, extra, data = _s3_error(b"PreconditionFailed", b"412 Precondition Failed")
        else:
            keys[key] = sent[: rng.randrange(len(sent))] if sent and rng.random() < 0.1 else sent
            status, extra, data = b"200 OK", [b'ETag: "e2"'], b""
    elif body is None:
        status, extra, data = _s3_error(b"NoSuchKey", b"404 Not Found")
    elif headers.get(b"if-none-match") == b'"e1"':
        status, data = b"304 Not Modified", b""
    else:
        status, data = b"200 OK", body
        ranged = headers.get(b"range", b"").removeprefix(b"bytes=").rstrip(b"-")
        if ranged.isdigit():
            start = int(ranged)
            status, data = b"206 Partial Content", body[start:]
            extra.append(b"Content-Range: bytes %d-%d/%d" % (start, len(body) - 1, len(body)))
        extra += [b'ETag: "e1"', b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT"]
    if rng.random() < 0.15:
        status = rng.choice(
            [
                b"200 OK",
                b"206 Partial Content",
                b"304 Not Modified",
                b"400 Bad",
                b"403 Forbidden",
                b"404 Not Found",
                b"412 Failed",
                b"500 Oops",
                b"503 Slow Down",
                b"307 Go",
                b"999 What",
            ]
        )
    if rng.random() < 0.2:
        extra = [h for h in extra if rng.random() < 0.5]
    if rng.random() < 0.1:
        extra.append(
            rng.choice(
                [
                    b"Last-Modified: yesterday",
                    b"ETag: ",
                    b"Content-Range: bytes x",
                    b"x-amz-checksum-crc32: AAAAAA==",
                    b"Content-Encoding: gzip",
                    b"Location: http://127.0.0.1:1/gone",
                ]
            )
        )
    if data and rng.random() < 0.15:
        data = _mutate(rng, data)
    length = b"%d" % len(data)
    if rng.random() < 0.1:
        length = rng.choice([*_S3_WEIRD[:4], b"%d" % (len(data) + 9), b"%d" % (len(data) // 2)])
    head = [b"HTTP/1.1 " + status, b"Content-Length: " + length, b"Connection: close", *extra]
    answer = b"\r\n".join(head) + b"\r\n\r\n" + (b"" if method == b"HEAD" else data)
    return answer[: rng.randrange(len(answer))] if rng.random() < 0.1 else answer


def fuzz_s3(seconds: float, seed: int) -> int:
    """A scripted S3 endpoint that lies in its listings, heads, bodies and errors,
    through the S3 gateway (boto3 parses, ferry decides; see :func:`_lied_to`), and
    takes writes (sometimes keeping less than was sent), deletes, locks and sweeps."""
    for name, value in (("AWS_ACCESS_KEY_ID", "fz"), ("AWS_SECRET_ACCESS_KEY", "fz-secret")):
        os.environ.setdefault(name, value)
    rng = random.Random(seed)
    body = rng.randbytes(30_000)
    keys = {**_S3_KEYS, "p/pkg.conda": body}
    answers = random.Random(seed + 1)

    def answer(conn: Any) -> None:
        if (request := _s3_request(conn)) is not None:
            conn.sendall(_s3_answer(answers, *request, keys))

    count = 0
    with _scripted_server(answer) as port, tempfile.TemporaryDirectory() as tmp:
        options = GatewayOptions(
            timeout=0.5,
            retries=2,
            retry_delay=0,
            min_rate=0,
            endpoint_url=f"http://127.0.0.1:{port}",
            region="us-east-1",
        )
        with open_gateway("s3://b/p", options) as source, open_gateway(tmp) as target:

            def fetch() -> None:
                fetched = source.fetch_if_changed("pkg.conda", rng.choice([None, '"e1"']))
                if fetched is not None:
                    with fetched.stream as stream:
                        stream.read()

            for count in _deadline(seconds):
                more = {
                    "fetch": fetch,
                    "abort": lambda: source.abort_incomplete(""),
                    **_writes(rng, source, count),
                }
                _lied_to(rng, source, target, body, count, more)
    return count


# -- the command line: every command, hostile arguments and job files -----------------
# Places are all inside the fuzzer's directory (its working directory while it runs), or
# refuse at once: nothing here may write elsewhere, delete, or reach beyond loopback.
_LOCAL = [
    "up",
    "mirror",
    "bundle",
    "pkg.conda",
    "binary",
    "empty",
    "fresh",
    "fresh/deeper/x",
    "binary/child",
    "/proc/ferry-nope",
    "",
    "-",
    "x" * 300,
    "é" * 10,
    ".",
    "mirror/",
    "m\udcff",  # a channel whose path has a byte that is no text
    "fresh\udcff",
]
_PLACES = [
    *_LOCAL,
    "file://",
    "file:///proc/ferry-nope",
    "http://127.0.0.1:1/x",
    "https://[",
    "http://%zz/",
    "ftp://[::1",
    "ftp://u:Leak@127.0.0.1:1/x",
    "sftp://",
    "sftp://127.0.0.1:1/x",
    "s3://",
    "s3:///x",
    "s3://b/x?y#z",
    "gopher://127.0.0.1/x",
    "http://127.0.0.1:99999/x",
    # text beyond ASCII where libcurl takes bytes (each was once an internal error)
    "http://127.0.0.1:1/é ü",
    "https://üser:pässwörd@127.0.0.1:1/x",
    "http://" + "ü" * 70 + "/x",  # no IDNA form: refused before any lookup
    "ftp://ü:ö@127.0.0.1:1/é",
    "sftp://ü@127.0.0.1:1/é",
    "http://127.0.0.1:1/x\udcff",  # a byte the command line did not decode
    "s3://b/x\udcff",
]
_WORDS = ["", "a", "fz", "live", "../x", "a/b", "-x", "é" * 300, "linux-64", "noarch"]
_NUMBERS = ["-1", "0", "1", "0.5", "1e400", "nan", "abc", "", "99999999999999999999", "4GB"]
_JOB_VALUES: dict[str, list[Any]] = {
    "filters": [
        {"include": ["pngtool >=2"]},
        {"latest": 1, "dependencies": True},
        {"licenses": {"allow": ["MIT"], "deny": ["GPL*"]}, "exclude": ["*-dbg"]},
        {"after": "2020-01-01", "max_size": "1MB"},
        {"lockfiles": ["binary", "up"]},
    ],
    "prune": [True],
    "max_prune_fraction": [0, 0.5, 1.5],
    "jobs": [1, 8],
    "processes": [1, 2],
    "allow_hosts": [["127.0.0.1"]],
    "grace": ["0s", "1d", "forever"],
    "strict": [True],
    "public_url": ["http://127.0.0.1/x", "ftp://x"],
    "snapshots": [{"keep": 2}, {}],
    "outputs": [{"html": False, "shards": False}, {"jlap": True, "bz2": True, "zst_level": 22}],
    "target_options": [{"retries": 1, "min_rate": 0}, {"openssh": False}],
    "subdirs": [["linux-64"], ["noarch", "noarch"], ["linux-6"], ["../x"]],
}


def _job_text(rng: random.Random) -> bytes:
    """A job for the upstream ``up``: valid, its keys given weird or plausible values,
    then perhaps its bytes damaged."""
    job: dict[str, Any] = {
        "source": "up",
        "target": f"t{rng.randrange(4)}",
        "subdirs": ["linux-64", "noarch"],
        "source_options": {"retries": 1, "retry_delay": 0, "timeout": 2},
    }
    for _ in range(rng.randint(0, 4)):
        key = rng.choice([*_JOB_VALUES, "source", "target", "source_options", "nonsense"])
        roll = rng.random()
        if roll < 0.15:
            job.pop(key, None)
        elif roll < 0.6 and key in _JOB_VALUES:
            job[key] = copy.deepcopy(rng.choice(_JOB_VALUES[key]))
        else:  # a NUL comes only this way: a command line cannot hold one
            job[key] = rng.choice([*_PLACES, "a\x00b"]) if rng.random() < 0.4 else _weird(rng)
    text = yaml.safe_dump(job, allow_unicode=True).encode()
    return _mutate(rng, text) if rng.random() < 0.25 else text


def _command_line(rng: random.Random, path: list[str], command: Any) -> list[str]:
    """``path`` and arguments for ``command``'s parameters: hostile places and names,
    and now and then options, most of them plausible (else click refuses nearly every
    line before the command runs)."""
    args, wild = list(path), rng.random() < 0.3
    for param in command.params:
        if isinstance(param, click.Argument):
            for _ in range(rng.randint(1, 3) if param.nargs == -1 else 1):
                if param.name == "job_file":
                    args.append("job.yaml" if rng.random() < 0.8 else rng.choice(_PLACES))
                else:
                    args.append(rng.choice(_WORDS if param.name in ("name", "a", "b") else _PLACES))
        elif param.name == "retries":
            args += ["--retries", "1", "--retry-delay", "0"]  # refusals fail fast
        elif isinstance(param, click.Option) and rng.random() < (0.3 if wild else 0.05):
            name = rng.choice(param.opts + param.secondary_opts)
            if param.is_flag:
                args.append(name)
            elif param.name in ("json", "metrics"):  # written with default retries: local
                args += [name, rng.choice([*_LOCAL, "ftp://u:Leak@127.0.0.1:99999/x"])]
            elif isinstance(param.type, click.types._NumberParamTypeBase):
                args += [name, rng.choice(_NUMBERS if wild else ["1", "2", "0.5"])]
            else:
                args += [name, rng.choice(rng.choice([_PLACES, _WORDS, _NUMBERS]))]
    return args


def _commands() -> list[tuple[list[str], Any]]:
    found: list[tuple[list[str], Any]] = []
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            found += [([name, sub], c) for sub, c in command.commands.items()]
        else:
            found.append(([name], command))
    return found


def _command_fixture(root: Path) -> None:
    """An upstream, its mirror with a snapshot, a bundle of it, and files of the wrong
    kind, made afresh now and then (the commands change them)."""
    for child in root.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    _mirror_and_bundle(root / "mirror", root / "bundle")
    its_own = shutil.ignore_patterns("snapshots", ".ferry")  # what only a mirror has
    shutil.copytree(root / "mirror", root / "up", ignore=its_own)
    (root / "pkg.conda").write_bytes(package_bytes(DEMO[0][0]))
    (root / "binary").write_bytes(b"\x00\xff\xfe" * 100)
    (root / "empty").write_bytes(b"")
    for where in ("mirror", "up"):  # a name that is no text, as a file system may hold
        (root / where / "noarch" / os.fsdecode(b"x\xff.conda")).write_bytes(b"\xff")
    shutil.copytree(root / "mirror", root / "m\udcff", symlinks=True)


def fuzz_commands(seconds: float, seed: int) -> int:
    """Every command with hostile arguments, and sync with hostile job files: an exit
    code from the table, no internal error, traceback, password or temp file left,
    and one error line (and one more for each report file that could not be written)."""
    rng = random.Random(seed)
    commands = _commands()
    codes = {errors.OK, errors.FAILED, errors.USAGE, errors.PARTIAL, errors.LOCKED}
    os.environ.update(
        AWS_ENDPOINT_URL="http://127.0.0.1:1", AWS_ACCESS_KEY_ID="fz", AWS_SECRET_ACCESS_KEY="fz"
    )
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        root = Path(tmp)
        count = 0
        for count in _deadline(seconds):
            if count % 40 == 1:
                _command_fixture(root)
            (root / "job.yaml").write_bytes(_job_text(rng))
            path, command = rng.choice(commands)
            if rng.random() < 0.3:
                path, command = ["sync"], main.commands["sync"]
            args = _command_line(rng, path, command)
            result = CliRunner().invoke(main, args)
            said = result.output  # stdout and stderr as a terminal shows them
            assert result.exit_code in codes, (args, result.exit_code, said)
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                args,
                result.exc_info,
            )
            assert "internal error" not in said and "Traceback" not in said, (args, said)
            # click's usage errors ("Error: ...") repeat a wrong argument as it was given
            ours = [line for line in said.splitlines() if not line.startswith("Error: ")]
            assert not any("Leak" in line for line in ours), (args, said)
            left = [p for p in root.rglob("*") if is_temp(p.name)]
            assert not left, (args, left)  # whole files or none, whatever went wrong
            said_errors = [line for line in said.splitlines() if line.startswith("ferry: error")]
            reports = [line.split()[2] for line in said_errors[1:]]  # a report file not written
            assert set(reports) <= {"--json", "--metrics"}, (args, said)
    return count


# -- a mirror damaged behind ferry's back: its own files, then the next sync -----------
def _damage(rng: random.Random, path: Path) -> str:
    """One file of the mirror's own changed as a disk, a crash or a hand may change it;
    says how."""
    roll = rng.random()
    if roll < 0.3 and path.suffix in (".json", ".jsonl"):
        with contextlib.suppress(ValueError):
            document = json.loads(path.read_bytes().splitlines()[0])
            if isinstance(document, dict):
                path.write_text(json.dumps(_json_mutant(rng, document)))
                return "rewritten"
    if roll < 0.5:
        path.write_bytes(_mutate(rng, path.read_bytes()))
        return "mutated"
    if roll < 0.7:
        path.write_bytes(path.read_bytes()[: rng.randrange(max(1, path.stat().st_size))])
        return "truncated"
    if roll < 0.8:
        path.write_bytes(rng.choice([b"", b"{}", b"[]", b"null", rng.randbytes(64)]))
        return "replaced"
    path.unlink()
    if roll < 0.9:
        return "deleted"
    path.mkdir()
    return "made a directory"


def _own_files(mirror: Path) -> list[Path]:
    """What ferry wrote beside the packages: indexes, logs, shards, pages, its state."""
    return sorted(
        p for p in mirror.rglob("*") if p.is_file() and not p.name.endswith((".conda", ".tar.bz2"))
    )


def fuzz_mirrors(seconds: float, seed: int) -> int:
    """A mirror, or a custom channel, with some of its own files damaged (and the
    index cache too), then synced (now and then with ``--verify``) from an upstream
    that changed or not, or re-indexed or published to: an exit code from the table,
    no internal error or temp file left; a run that rewrites the index leaves what a
    client reads consistent (every record's package present and whole, the log a
    verified chain to the repodata.json served), and a ``--verify`` one every shard."""
    from tests.upstream import build_upstream, edit_repodata, job_yaml

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(root / "cache")  # publish's index cache
        build_upstream(root / "up")
        shutil.copytree(root / "up", root / "changed")
        extra = Spec("fzextra", "1.0", "0", subdir="linux-64")
        build_upstream(root / "changed", [(extra, ".conda")])
        edit_repodata(root / "changed", "noarch", _hot_fix)
        packages = sorted(str(p) for p in (root / "up").rglob("*") if p.suffix in _PACKAGES)
        pristine, custom = root / "pristine", root / "custom"
        job_yaml(root / "job.yaml", str(root / "up"), str(pristine), _MIRROR_JOB)
        assert CliRunner().invoke(main, ["-q", "sync", str(root / "job.yaml")]).exit_code == 0
        for args in (
            ["export", str(pristine), str(root / "bundles" / "first")],  # an export history
            ["snapshot", "pin", str(pristine), next((pristine / "snapshots").iterdir()).name],
            ["publish", *packages[1:], "--to", str(custom)],
        ):
            assert CliRunner().invoke(main, ["-q", *args]).exit_code == 0, args
        count = 0
        for count in _deadline(seconds):
            work = root / f"m{count}"
            damaged_custom = rng.random() < 0.3
            shutil.copytree(custom if damaged_custom else pristine, work, symlinks=True)
            own = _own_files(work)
            damage = {
                str(path.relative_to(work)): _damage(rng, path)
                for path in rng.sample(own, rng.randint(1, 3))
            }
            if rng.random() < 0.5:
                args = _reader_command(rng, work, root)
                result = CliRunner().invoke(main, args)
                _check_run(result, work, (args, damage, result.output))
            if damaged_custom:
                _index_damaged(rng, root, work, packages[0], damage)
            else:
                _sync_damaged(rng, root, work, damage)
            shutil.rmtree(work)
    return count


_PACKAGES = (".conda", ".bz2")
_MIRROR_JOB = "outputs: {jlap: true, bz2: true, current_repodata: true}\nsnapshots: {keep: 3}\n"


def _sync_damaged(rng: random.Random, root: Path, mirror: Path, damage: Any) -> None:
    from tests.upstream import job_yaml

    source = root / rng.choice(["up", "changed"])
    job_yaml(root / "job.yaml", str(source), str(mirror), _MIRROR_JOB)
    verify = rng.random() < 0.3
    args = ["-q", "sync", str(root / "job.yaml"), *(["--verify"] if verify else [])]
    result = CliRunner().invoke(main, args)
    context = (source.name, args, damage, result.output)
    _check_run(result, mirror, context)
    # A quiet night (upstream unchanged) rewrites nothing, damaged or not, and a shard
    # is trusted by its name: --verify re-reads all. Snapshots stay as they are.
    if result.exit_code == errors.OK and (verify or source.name == "changed"):
        _check_published(mirror, verify, context)


def _index_damaged(
    rng: random.Random, root: Path, channel: Path, package: str, damage: Any
) -> None:
    """Re-index or publish to a damaged custom channel, its index cache damaged too
    now and then (the channel's path, so its cache, is the same every round)."""
    stable = root / "custom-work"
    shutil.rmtree(stable, ignore_errors=True)
    channel.rename(stable)
    cache = [p for p in (root / "cache").rglob("*") if p.is_file()]
    for path in rng.sample(cache, min(len(cache), rng.randint(0, 2))):
        damage[f"cache/{path.name}"] = _damage(rng, path)
    args = rng.choice([["index", str(stable)], ["publish", package, "--to", str(stable)]])
    result = CliRunner().invoke(main, ["-q", *args])
    context = (args, damage, result.output)
    _check_run(result, stable, context)
    if result.exit_code == errors.OK:
        _check_published(stable, False, context)
    stable.rename(channel)


def _check_published(channel: Path, with_shards: bool, context: Any) -> None:
    from tests.mirrorcheck import assert_converged, check_subdir

    try:
        with open_gateway(str(channel)) as gateway:
            for subdir in ("linux-64", "noarch"):
                check_subdir(gateway, subdir, with_shards=with_shards)
            assert_converged(gateway)
    except Exception as exc:
        raise AssertionError(context) from exc


def _reader_command(rng: random.Random, mirror: Path, root: Path) -> list[str]:
    """A command other than sync that reads what the mirror keeps."""
    snapshot = next((p.name for p in (mirror / "snapshots").glob("2*")), "none")
    return rng.choice(
        [
            ["verify", str(mirror)],
            ["status", str(mirror)],
            ["gc", str(mirror), "--now"],
            ["export", str(mirror), str(root / "bundles" / mirror.name)],
            ["snapshot", "list", str(mirror)],
            ["snapshot", "show", str(mirror), snapshot],
            ["snapshot", "create", str(mirror)],
            ["snapshot", "diff", str(mirror), snapshot, "live"],
            ["snapshot", "restore", str(mirror), snapshot],
        ]
    )


def _check_run(result: Any, mirror: Path, context: Any) -> None:
    """An exit code from the table, no internal error, no temp file left."""
    codes = {errors.OK, errors.FAILED, errors.USAGE, errors.PARTIAL}
    assert result.exit_code in codes, (result.exit_code, context)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exc_info,
        context,
    )
    said = result.output
    assert "internal error" not in said and "Traceback" not in said, context
    assert not [p for p in mirror.rglob("*") if is_temp(p.name)], context


def _hot_fix(document: dict[str, Any]) -> None:
    for record in document.get("packages.conda", {}).values():
        record["depends"] = [*record.get("depends", []), "fzfix"]


def _inside(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return parts[0] in ("b", "mirror", "targets")


FUZZERS: dict[str, Callable[[float, int], int]] = {
    "packages": fuzz_packages,
    "records": fuzz_records,
    "manifests": fuzz_manifests,
    "descriptions": fuzz_descriptions,
    "lockfiles": fuzz_lockfiles,
    "jobs": fuzz_jobs,
    "shards": fuzz_shards,
    "bodies": fuzz_bodies,
    "sftp": fuzz_sftp,
    "answers": fuzz_answers,
    "ftp": fuzz_ftp,
    "s3": fuzz_s3,
    "sftpserver": fuzz_sftpserver,
    "commands": fuzz_commands,
    "mirrors": fuzz_mirrors,
}


def _unseen_errors() -> list[str]:
    """Errors raised where nobody catches them (a thread's, a finalizer's): Python
    prints them as tracebacks, which a run must never show. Collected, to fail the
    fuzzer that caused them."""
    seen: list[str] = []

    def unraisable(info: Any) -> None:
        seen.append(f"in {info.object!r}: {info.exc_type.__name__}: {info.exc_value}")

    def in_thread(args: Any) -> None:
        seen.append(f"in thread {args.thread}: {args.exc_type.__name__}: {args.exc_value}")

    sys.unraisablehook, threading.excepthook = unraisable, in_thread
    return seen


if __name__ == "__main__":
    kind, budget = sys.argv[1], float(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else random.randrange(1 << 30)
    unseen = _unseen_errors()
    inputs = FUZZERS[kind](budget, seed)
    gc.collect()
    assert not unseen, "\n".join(unseen)
    print(json.dumps({"fuzzer": kind, "inputs": inputs, "seed": seed}))
