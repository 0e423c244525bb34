"""ferry sync against conda-mirror and against the raw download, ratios in one run.

    .venv/bin/python benchmarks/bench_sync.py [--packages 2000] [--records 200000]

1. cold sync of --packages small packages served by nginx on loopback, vs
   conda-mirror 0.10 (installed in its own venv under ~/.cache) on the same
   upstream, vs a plain threaded download of the same bytes;
2. a re-sync with nothing to do: time and requests per subdir;
3. filtering a --records upstream repodata built from the real records in
   ../shared/data/repodata/: time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._common import SHARED, in_subprocess, report, table, timed
from tests import servers
from tests.upstream import reindex

JOBS = 8


def build_upstream(root: Path, count: int) -> int:
    from tests.pkgmaker import Spec, write_package

    total = 0
    for i in range(count):
        subdir = "noarch" if i % 5 == 0 else "linux-64"
        spec = Spec(
            f"pkg{i}",
            f"1.{i % 9}",
            f"h{i}_0",
            subdir=subdir,
            noarch="generic" if subdir == "noarch" else None,
            files={"data.bin": os.urandom(20_000)},
        )
        total += write_package(root, spec, ".conda" if i % 4 else ".tar.bz2").stat().st_size
    reindex(root)
    return total


def raw_download(base_url: str, root: Path, out: Path) -> None:
    import requests

    names = [
        str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith((".conda", ".tar.bz2"))
    ]
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=JOBS)
    session.mount("http://", adapter)

    def get(name: str) -> None:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with session.get(f"{base_url}/{name}", stream=True) as response:
            response.raise_for_status()
            with target.open("wb") as handle:
                for chunk in response.iter_content(1 << 20):
                    handle.write(chunk)

    with ThreadPoolExecutor(JOBS) as pool:
        list(pool.map(get, names))


def conda_mirror() -> str | None:
    """conda-mirror 0.10 in its own venv; None when it cannot be installed here."""
    venv = Path.home() / ".cache" / "conda-ferry-bench" / "conda-mirror"
    exe = venv / "bin" / "conda-mirror"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        done = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "conda-mirror==0.10.0"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(f"conda-mirror not installable: {done.stderr[-300:]}", file=sys.stderr)
            return None
    return str(exe)


def filter_case(records: int) -> None:
    import orjson

    from conda_ferry.mirror.filters import Filters, Selector
    from conda_ferry.mirror.sync import _records

    source = orjson.loads((SHARED / "data/repodata/r-linux-64.json").read_bytes())
    real = list({**source.get("packages", {}), **source.get("packages.conda", {})}.values())
    packages = {}
    for i in range(records):
        record = dict(real[i % len(real)])
        record["build"] = f"{record.get('build', '0')}_{i // len(real)}"
        packages[f"{record['name']}-{record['version']}-{record['build']}.tar.bz2"] = record
    raw = orjson.dumps({"info": {"subdir": "linux-64"}, "packages": packages, "packages.conda": {}})
    del packages, source, real
    started = time.perf_counter()
    document = orjson.loads(raw)
    merged = {"linux-64": _records(document, "bench"), "noarch": {}}
    filters = Filters.parse(
        {
            "include": ["r-base >=4", "r-essentials", "r-ggplot2"],
            "exclude": ["*-dbg"],
            "dependencies": True,
            "licenses": {"deny": ["AGPL*"]},
            "latest": 3,
        }
    )
    selection = Selector(filters).select(merged)
    seconds = time.perf_counter() - started
    report(
        {
            "seconds": seconds,
            "kept": len(selection.kept["linux-64"]),
            "records": records,
            "mb": round(len(raw) / 1e6),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    if args.case == "filter":
        filter_case(args.records)
        return
    me = __spec__.name if __spec__ else "benchmarks." + Path(__file__).stem
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nginx = servers.start_nginx(work / "nginx")
        try:
            root = nginx.root / "up"
            size = build_upstream(root, args.packages)
            os.sync()  # no run pays for writing back the packages just generated
            url = f"{nginx.url}/up"
            rows = [("case", "seconds", "vs ferry", "aim")]
            raw_s = timed(lambda: raw_download(url, root, work / "raw"))
            job = work / "job.yaml"
            job.write_text(
                f"source: {url}\ntarget: {work / 'mirror'}\n"
                f"subdirs: [linux-64, noarch]\njobs: {JOBS}\n"
            )
            env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
            ferry = [
                sys.executable,
                "-c",
                "from mirror.cli import main; main()",
                "-q",
                "sync",
                str(job),
            ]
            cold = timed(lambda: subprocess.run(ferry, check=True, env=env))
            rows.append(
                (
                    f"1. ferry cold sync, {args.packages} pkgs, {size / 1e6:.0f} MB",
                    f"{cold:.2f}",
                    "1.00",
                    "",
                )
            )
            rows.append(
                (
                    "   raw threaded download of the same bytes",
                    f"{raw_s:.2f}",
                    f"{cold / raw_s:.2f}",
                    "ferry <= 1.5x raw",
                )
            )
            exe = conda_mirror()
            if exe:

                def run_cm() -> None:
                    for platform in ("linux-64", "noarch"):
                        subprocess.run(
                            [
                                exe,
                                "--upstream-channel",
                                url,
                                "--target-directory",
                                str(work / "cm"),
                                "--platform",
                                platform,
                                "--num-threads",
                                str(JOBS),
                            ],
                            check=True,
                            capture_output=True,
                        )

                cm = timed(run_cm)
                rows.append(
                    (
                        "   conda-mirror 0.10, same upstream",
                        f"{cm:.2f}",
                        f"{cm / cold:.1f}x slower",
                        ">= 10x slower",
                    )
                )
                cm2 = timed(run_cm)
                rows.append(("   conda-mirror re-run, nothing to do", f"{cm2:.2f}", "", ""))
            log = Path(nginx.extra["log"])
            before = len(log.read_text().splitlines())
            again = timed(lambda: subprocess.run(ferry, check=True, env=env))
            requests = len(log.read_text().splitlines()) - before
            rows.append(
                (
                    f"2. ferry re-sync, nothing to do ({requests} requests, 2 subdirs)",
                    f"{again:.2f}",
                    "",
                    "< 0.5 s",
                )
            )
            if (SHARED / "data/repodata/r-linux-64.json").exists():
                result = in_subprocess(me, "filter", "--records", str(args.records))
                rows.append(
                    (
                        f"3. filter {result['records']} records ({result['mb']} MB), "
                        f"{result['kept']} kept",
                        f"{result['seconds']:.2f}",
                        f"peak {result['peak_mb']:.0f} MB",
                        "< 5 s, < 1.5 GB",
                    )
                )
            table(rows)
            print(json.dumps({"note": "re-sync time includes interpreter start-up"}))
        finally:
            servers.stop(nginx.proc)


if __name__ == "__main__":
    main()
