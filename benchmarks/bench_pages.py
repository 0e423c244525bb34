"""The pages of a conda-forge-sized subdir: time, size and memory, against one
orjson parse of the same subdir's repodata.json (what any reader of it pays).

    .venv/bin/python -m benchmarks.bench_pages [--records 500000] [--builds 20]

Cases, each in its own process: the cold write (every page new), the warm write
(nothing changed: digests compared, nothing written) and the orjson parse.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import orjson

from benchmarks._common import arguments, conda_forge_like, in_subprocess, report, table, timed
from conda_ferry.gateways import open_gateway
from conda_ferry.index.channel import ChannelEntry
from conda_ferry.mirror.pages import join_pages, present_pages, write_listings, write_page_part


def make_repodata(path: Path, records: int, builds: int) -> None:
    """Each name needing five others, python and glibc."""

    def depends(n: int, names: int) -> list[str]:
        others = [f"package-{(n * 7 + k) % names:06d} >=1.{k}" for k in range(5)]
        return [*others, "python >=3.12,<3.13.0a0", "__glibc >=2.17"]

    path.write_bytes(orjson.dumps(conda_forge_like(records, builds, depends)))


def entries(path: Path) -> list[ChannelEntry]:
    document = orjson.loads(path.read_bytes())
    return [
        ChannelEntry(
            "linux-64",
            filename,
            record,
            {"about": {"summary": f"What {record['name']} does, in one line of text"}},
        )
        for filename, record in document["packages.conda"].items()
    ]


def case(name: str, work: Path) -> None:
    repodata = work / "repodata.json"
    if name == "orjson":
        report({"seconds": timed(lambda: orjson.loads(repodata.read_bytes()))})
        return
    listed = entries(repodata)
    digests = orjson.loads((work / "digests.json").read_bytes()) if name == "warm" else {}
    started = time.perf_counter()
    with open_gateway(str(work / "channel")) as gateway:
        present = {info.name for info in gateway.files("linux-64")}
        have = present_pages(gateway, "linux-64", present)
        part = write_page_part(gateway, "linux-64", listed, digests, have, jobs=4)
        pages = join_pages("linux-64", have, [part])  # in one process: one part
        result = write_listings(gateway, "linux-64", pages, digests, digests)
    seconds = time.perf_counter() - started
    (work / "digests.json").write_bytes(orjson.dumps(result.digests))
    report({"seconds": seconds, "written": len(result.written)})


def main() -> None:
    args = arguments(500_000, case)
    if args is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_repodata(work / "repodata.json", args.records, args.builds)
        size = (work / "repodata.json").stat().st_size
        parse = in_subprocess("orjson", "--work", tmp)
        cold = in_subprocess("cold", "--work", tmp)
        warm = in_subprocess("warm", "--work", tmp)
        pages = list((work / "channel/linux-64").rglob("*.html"))
        listing = [p for p in pages if p.parent.name == "linux-64"]
        print(
            f"{args.records} records, {args.records // args.builds} names, "
            f"repodata.json {size / 2**20:.0f} MiB; {len(pages)} pages, "
            f"{sum(p.stat().st_size for p in pages) / 2**20:.0f} MiB; listing in "
            f"{len(listing)} parts; the largest page "
            f"{max(p.stat().st_size for p in pages) / 2**20:.1f} MiB"
        )
        rows = [("case", "seconds", "x orjson parse", "pages written", "peak MB")]
        for label, result in (("cold write", cold), ("warm (unchanged)", warm)):
            rows.append(
                (
                    label,
                    f"{result['seconds']:.2f}",
                    f"{result['seconds'] / parse['seconds']:.1f}",
                    str(result["written"]),
                    f"{result['peak_mb']:.0f}",
                )
            )
        reference = (f"{parse['seconds']:.2f}", "1", "-", f"{parse['peak_mb']:.0f}")
        rows.append(("orjson.loads(repodata.json)", *reference))
        table(rows)


if __name__ == "__main__":
    main()
