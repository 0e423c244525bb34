"""A conda-forge-sized subdir: what a sync's selection costs, the whole-repodata path
and the sharded path side by side, against one orjson parse of the repodata.json.

    .venv/bin/python -m benchmarks.bench_scale [--records 600000]

Each case is a dry run (``ferry sync --dry-run``: fetch, parse, filter, plan) in its
own process, so its peak memory is its own:

- full: ``exclude`` only, so every record is needed: repodata.json.zst is read;
- fields: the newest 3 versions without GPL licences: every record's version and
  licence is read (the fields beyond name and size are decoded for each);
- sharded: ``include`` of one name with ``dependencies``: the shard index and the
  shards of its closure are read;
- resync: a real sync (not a dry run) into a mirror holding all of the subdir (its
  package files sparse, of the records' sizes), after one upstream hot-fix: the
  mirror's own repodata is read, compared, and everything is published again;
- orjson: ``orjson.loads`` of the same repodata.json, the least any reader pays.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks._common import arguments, conda_forge_like, in_subprocess, report, table
from conda_ferry.gateways import open_gateway
from conda_ferry.index.publish import OutputOptions, publish_subdir
from conda_ferry.mirror.state import SubdirState

BASE = 50  # names everything depends on, as python, libgcc and friends are


def make_document(records: int, builds: int) -> dict[str, Any]:
    """A dependency graph like conda-forge's: a few base names everyone needs, each
    other name needing three of them."""

    def depends(n: int, names: int) -> list[str]:
        base = [] if n < BASE else [f"package-{(n * k) % BASE:06d} >=1.{k}" for k in (1, 2, 3)]
        return [*base, "__glibc >=2.17"]

    return conda_forge_like(records, builds, depends)


def case(name: str, work: Path) -> None:
    if name == "orjson":
        started = time.perf_counter()
        orjson.loads((work / "upstream/linux-64/repodata.json").read_bytes())
        report({"seconds": time.perf_counter() - started})
        return
    from click.testing import CliRunner

    from conda_ferry.mirror.cli import main

    out = work / f"{name}.json"
    dry = [] if name.startswith("resync") else ["--dry-run"]
    job = work / f"{name.split('-')[0]}.yaml"
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["-q", "sync", str(job), *dry, "--json", str(out)])
    seconds = time.perf_counter() - started
    if result.exit_code != 0:
        raise SystemExit(result.output)
    subdirs = json.loads(out.read_text())["subdirs"]
    linux = next(s for s in subdirs if s["subdir"] == "linux-64")
    kept = linux["published"] if not dry else linux["added"]
    report({"seconds": seconds, "bytes": linux["repodata"]["bytes"], "kept": kept})


def make_mirror(target: Path, document: dict[str, Any]) -> None:
    """A mirror of all of ``document``: sparse package files, its index, its state."""
    (target / "linux-64").mkdir(parents=True)
    for filename, record in document["packages.conda"].items():
        with open(target / "linux-64" / filename, "wb") as file:
            file.truncate(record["size"])
    with open_gateway(str(target)) as gateway:
        for subdir in ("linux-64", "noarch"):
            records = document["packages.conda"] if subdir == "linux-64" else {}
            doc = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": records}
            publish_subdir(gateway, subdir, doc, OutputOptions())
            state = SubdirState(subdir, upstream_files=sorted(records), complete=True)
            state.save(gateway)


def main() -> None:
    args = arguments(600_000, case)
    if args is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        document = make_document(args.records, args.builds)
        with open_gateway(str(work / "upstream")) as gateway:
            publish_subdir(gateway, "linux-64", document, OutputOptions(jlap=False))
            empty = {"info": {"subdir": "noarch"}, "packages": {}, "packages.conda": {}}
            publish_subdir(gateway, "noarch", empty, OutputOptions(jlap=False))
        jobs = {
            "full": "filters: {exclude: ['*-dbg']}",
            "fields": "filters: {latest: 3, licenses: {deny: ['GPL-*']}}",
            "sharded": "filters: {include: [package-000077], dependencies: true}",
        }
        for name, filters in jobs.items():
            (work / f"{name}.yaml").write_text(
                f"source: {work / 'upstream'}\ntarget: {work / name}\n"
                f"subdirs: [linux-64, noarch]\n{filters}\n"
            )
        size = (work / "upstream/linux-64/repodata.json").stat().st_size
        zst = (work / "upstream/linux-64/repodata.json.zst").stat().st_size
        results = {n: in_subprocess(n, "--work", tmp) for n in ("orjson", *jobs)}
        make_mirror(work / "mirror", document)
        (work / "resync.yaml").write_text(
            f"source: {work / 'upstream'}\ntarget: {work / 'mirror'}\n"
            "subdirs: [linux-64, noarch]\nfilters: {exclude: ['*-dbg']}\n"
        )
        in_subprocess("resync-first", "--work", tmp)  # the pages, written once
        first = next(iter(document["packages.conda"].values()))
        first["depends"] = [*first["depends"], "hot-fixed"]
        with open_gateway(str(work / "upstream")) as gateway:
            publish_subdir(gateway, "linux-64", document, OutputOptions(jlap=False))
        del document
        results["resync"] = in_subprocess("resync", "--work", tmp)
    print(
        f"{args.records} records: repodata.json {size / 2**20:.0f} MiB, .zst {zst / 2**20:.1f} MiB"
    )
    parse = results["orjson"]
    rows = [("case", "seconds", "x orjson", "peak MB", "x json size", "repodata read", "kept")]
    for name in ("full", "fields", "sharded", "resync"):
        r = results[name]
        rows.append(
            (
                f"sync, {name}" if name == "resync" else f"sync --dry-run, {name}",
                f"{r['seconds']:.2f}",
                f"{r['seconds'] / parse['seconds']:.2f}",
                f"{r['peak_mb']:.0f}",
                f"{r['peak_mb'] * 2**20 / size:.1f}",
                f"{r['bytes'] / 2**20:.2f} MiB",
                str(r["kept"]),
            )
        )
    rows.append(
        (
            "orjson.loads(repodata.json)",
            f"{parse['seconds']:.2f}",
            "1",
            f"{parse['peak_mb']:.0f}",
            f"{parse['peak_mb'] * 2**20 / size:.1f}",
            "-",
            "-",
        )
    )
    table(rows)


if __name__ == "__main__":
    main()
