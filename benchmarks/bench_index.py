"""The indexer against its limits and peers, ratios measured in one run.

    .venv/bin/python benchmarks/bench_index.py [--small 2000] [--big 200] [--large 20000]

1. cold index of small packages vs py-rattler's index_fs on an identical copy;
2. cold index of packages of a few MB vs one md5+sha256 pass over the same files;
3. re-index after adding one package to an indexed channel of --large packages;
4. the JLAP diff of a 200,000-record repodata (20 added, 5 removed) vs
   jsonpatch.make_patch;
and the peak memory of each, every case in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import inspect
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks._common import SHARED, in_subprocess, report, table, timed
from conda_ferry.gateways import open_gateway
from conda_ferry.index.channel import IndexOptions, index_channel
from tests.pkgmaker import Spec, write_package


def make_channel(
    root: Path,
    count: int,
    payload: int = 0,
    start: int = 0,
    bz2_share: int = 3,
    per_name: int = 1,
) -> None:
    """Packages with a small dependency web; every ``bz2_share``-th is a .tar.bz2;
    ``per_name`` builds share each package name, as in real channels."""
    for i in range(start, start + count):
        name = f"pkg{i // per_name}"
        files = {f"lib/data{i}.bin": os.urandom(payload)} if payload else {}
        subdir = "noarch" if i % 10 == 0 else "linux-64"
        write_package(
            root,
            Spec(
                name,
                f"1.{i % 7}",
                f"h{i}_0",
                subdir=subdir,
                noarch="generic" if subdir == "noarch" else None,
                depends=[f"pkg{(i * 7) % max(count, 1)}"],
                files=files,
            ),
            ".tar.bz2" if bz2_share and i % bz2_share == 0 else ".conda",
        )


def ferry_index(root: Path, cache: Path) -> None:
    with open_gateway(str(root)) as gateway:
        index_channel(
            gateway,
            IndexOptions(subdirs=["linux-64", "noarch"], cache_dir=cache, jobs=os.cpu_count() or 2),
        )


def rattler_index(root: Path) -> None:
    from rattler.index import index_fs

    result = index_fs(root, write_zst=True, write_shards=True)
    if inspect.isawaitable(result):
        asyncio.run(result)  # type: ignore[arg-type]


def hash_pass(root: Path) -> None:
    for path in root.rglob("*"):
        if path.name.endswith((".conda", ".tar.bz2")):
            md5, sha = hashlib.md5(), hashlib.sha256()
            with path.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    md5.update(chunk)
                    sha.update(chunk)


def case(name: str, work: Path, args: argparse.Namespace) -> None:
    if name == "ours-small":
        report({"seconds": timed(lambda: ferry_index(work / "small-a", work / "cache-a"))})
    elif name == "rattler-small":
        report({"seconds": timed(lambda: rattler_index(work / "small-b"))})
    elif name in ("ours-big", "ours-mixed"):
        where = work / name.split("-")[1]
        report({"seconds": timed(lambda: ferry_index(where, work / f"cache-{name}"))})
    elif name in ("hash-big", "hash-mixed"):
        report({"seconds": timed(lambda: hash_pass(work / name.split("-")[1]))})
    elif name == "prep-large":
        ferry_index(work / "large", work / "cache-large")
        rattler_index(work / "large-r")
        report({"seconds": 0.0})
    elif name == "ours-add-one":
        make_channel(work / "large", 1, start=args.large + 1, per_name=10)
        report({"seconds": timed(lambda: ferry_index(work / "large", work / "cache-large"))})
    elif name == "rattler-add-one":
        make_channel(work / "large-r", 1, start=args.large + 1, per_name=10)
        report({"seconds": timed(lambda: rattler_index(work / "large-r"))})
    elif name in ("jlap-diff", "jsonpatch"):
        import jsonpatch
        import orjson

        from conda_ferry.index import jlap

        old = orjson.loads((work / "big-repodata.json").read_bytes())
        new = copy.deepcopy(old)
        names = sorted(new["packages"])
        for filename in names[:5]:
            del new["packages"][filename]
        template = next(iter(old["packages"].values()))
        for i in range(20):
            new["packages.conda"][f"added-{i}-1.0-0.conda"] = {**template, "name": f"added-{i}"}
        if name == "jlap-diff":
            seconds = timed(lambda: jlap.diff(old, new))
        else:
            seconds = timed(lambda: jsonpatch.make_patch(old, new))
        report({"seconds": seconds})


def big_repodata(path: Path, records: int) -> None:
    import orjson

    source = orjson.loads((SHARED / "data/repodata/r-linux-64.json").read_bytes())
    real = list({**source.get("packages", {}), **source.get("packages.conda", {})}.values())
    packages = {}
    for i in range(records):
        record = dict(real[i % len(real)])
        record["build"] = f"{record.get('build', '0')}_{i}"
        packages[f"{record['name']}-{record['version']}-{record['build']}.tar.bz2"] = record
    document = {
        "info": {"subdir": "linux-64"},
        "packages": packages,
        "packages.conda": {},
        "removed": [],
        "repodata_version": 1,
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # rattler opens many files
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--work")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--big", type=int, default=200)
    parser.add_argument("--big-mb", type=float, default=3.0)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    if args.case:
        case(args.case, Path(args.work), args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        common = ["--work", tmp, "--large", str(args.large)]
        print(
            f"building {args.small} small, {args.big} x {args.big_mb} MB and "
            f"{args.large} packages ...",
            file=sys.stderr,
        )
        make_channel(work / "small-a", args.small)
        shutil.copytree(work / "small-a", work / "small-b")
        make_channel(work / "big", args.big, payload=int(args.big_mb * 1e6), bz2_share=0)
        make_channel(work / "mixed", args.big // 4, payload=int(args.big_mb * 1e6))
        make_channel(work / "large", args.large, per_name=10)
        shutil.copytree(work / "large", work / "large-r")
        for directory in ("small-a", "small-b", "big", "mixed"):
            hash_pass(work / directory)  # every case starts from the same warm page cache
        os.sync()  # and none pays for writing back the packages just generated
        rows = [("case", "ours s", "peer s", "ratio", "aim", "our peak MB", "peer peak MB")]

        def compare(label: str, ours: str, peer: str, aim: str) -> None:
            a = in_subprocess(ours, *common)
            b = in_subprocess(peer, *common)
            rows.append(
                (
                    label,
                    f"{a['seconds']:.3f}",
                    f"{b['seconds']:.3f}",
                    f"{a['seconds'] / b['seconds']:.2f}",
                    aim,
                    f"{a['peak_mb']:.0f}",
                    f"{b['peak_mb']:.0f}",
                )
            )

        compare(
            f"1. cold index, {args.small} small vs rattler index_fs",
            "ours-small",
            "rattler-small",
            "< 1",
        )
        compare(
            f"2. cold index, {args.big} x {args.big_mb} MB .conda vs md5+sha256 pass",
            "ours-big",
            "hash-big",
            "<= 1.3",
        )
        compare(
            f"2b. the same, {args.big // 4} packages, 1 in 3 a .tar.bz2",
            "ours-mixed",
            "hash-mixed",
            "(bz2 decode)",
        )
        in_subprocess("prep-large", *common)  # both indexed once; then one package added
        compare(
            f"3. re-index after adding 1 to {args.large} vs rattler",
            "ours-add-one",
            "rattler-add-one",
            "ours < 1 s",
        )
        if (SHARED / "data/repodata/r-linux-64.json").exists():
            big_repodata(work / "big-repodata.json", args.records)
            compare(
                f"4. JLAP diff, {args.records} records +20 -5 vs jsonpatch",
                "jlap-diff",
                "jsonpatch",
                "< 1 s, >= 10x",
            )
        else:
            print("../shared is absent: case 4 skipped", file=sys.stderr)
        table(rows)


if __name__ == "__main__":
    main()
