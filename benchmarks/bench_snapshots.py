"""What a snapshot costs: bytes and seconds for a subdir of N packages, against
copying the index files it preserves (``cp -r``, the least any snapshot can write)
and against what a copy of the packages would take (aptly-style snapshots by copy).

    .venv/bin/python -m benchmarks.bench_snapshots [--records 2000]

Every ``ferry`` run is a fresh process, interpreter start included, as cron runs it.
The packages are sparse files of the records' sizes: create, restore and delete
never read a package's bytes, only its size in the listing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks._common import table
from benchmarks.bench_pages import make_repodata
from conda_ferry.gateways import open_gateway
from conda_ferry.index.publish import OutputOptions, publish_subdir


def channel(root: Path, records: int) -> int:
    """A published subdir of ``records`` packages (sparse files); returns their bytes."""
    (root / "linux-64").mkdir(parents=True)
    make_repodata(root / "linux-64/repodata.json", records, builds=4)
    document = orjson.loads((root / "linux-64/repodata.json").read_bytes())
    (root / "linux-64/repodata.json").unlink()
    total = 0
    for filename, record in document["packages.conda"].items():
        with open(root / "linux-64" / filename, "wb") as out:
            out.truncate(record["size"])
        total += record["size"]
    with open_gateway(str(root)) as gateway:
        publish_subdir(gateway, "linux-64", document, OutputOptions())
        empty = {"info": {"subdir": "noarch"}, "packages": {}, "packages.conda": {}}
        publish_subdir(gateway, "noarch", empty, OutputOptions())
    return total


def drop_one(root: Path) -> None:
    """The live subdir moves on: one record less (its file stays, as a prune leaves it)."""
    document = orjson.loads((root / "linux-64/repodata.json").read_bytes())
    document["packages.conda"].pop(min(document["packages.conda"]))
    with open_gateway(str(root)) as gateway:
        publish_subdir(gateway, "linux-64", document, OutputOptions())


def ferry(*args: str) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "conda_ferry", "-q", *args]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mirror"
        packages = channel(root, args.records)
        index = [p for p in (root / "linux-64").iterdir() if not p.name.endswith(".conda")]
        started = time.perf_counter()
        copy = Path(tmp) / "copy"
        copy.mkdir()
        subprocess.run(["cp", "-r", *map(str, index), str(copy)], check=True)
        cp_seconds = time.perf_counter() - started
        start_up = ferry("--version")
        create = ferry("snapshot", "create", str(root), "bench")
        written = size_of(root / "snapshots/bench")
        drop_one(root)
        restore = ferry("snapshot", "restore", str(root), "bench")
        delete = ferry("snapshot", "delete", str(root), "bench")
        index_bytes = size_of(copy)
    print(
        f"{args.records} records: packages {packages / 2**20:.0f} MiB; the subdir's index "
        f"files {index_bytes / 2**20:.2f} MiB; a snapshot writes {written / 2**20:.2f} MiB "
        f"({written / packages:.2%} of a copy of the packages)"
    )
    rows = [
        ("case", "seconds", "x cp -r of the index files"),
        ("ferry snapshot create", f"{create:.2f}", f"{create / cp_seconds:.0f}"),
        ("ferry snapshot restore (one package back)", f"{restore:.2f}", "-"),
        ("ferry snapshot delete", f"{delete:.2f}", "-"),
        ("ferry --version (interpreter start)", f"{start_up:.2f}", "-"),
        ("cp -r of the index files", f"{cp_seconds:.3f}", "1"),
    ]
    table(rows)


if __name__ == "__main__":
    main()
