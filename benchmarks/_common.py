"""Shared bits of the benchmarks: timing a case in a fresh process, peak memory."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def peak_mb() -> float:
    """This process's own peak resident memory. Not ``ru_maxrss``: Linux carries that
    across exec, so a case would report the peak of the process that started it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def in_subprocess(case: str, *args: str) -> dict[str, Any]:
    """Run one case of the running benchmark in its own process, so its peak memory
    is its own."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    module = spec.name if spec else "benchmarks." + Path(str(main.__file__)).stem
    out = subprocess.run(
        [sys.executable, "-m", module, "--case", case, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = out.stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        # py-rattler now and then aborts while its runtime shuts down, after the work
        return dict(json.loads(lines[-1]))
    raise SystemExit(f"case {case} failed ({out.returncode}):\n{out.stderr[-3000:]}")


def report(values: dict[str, Any]) -> None:
    print(json.dumps({**values, "peak_mb": round(peak_mb(), 1)}), flush=True)


def table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def arguments(records: int, case: Callable[[str, Path], None]) -> argparse.Namespace | None:
    """The command line of a benchmark whose cases run in processes of their own:
    its arguments, or, in such a process (``--case``), that case run and None."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--work")
    parser.add_argument("--records", type=int, default=records)
    parser.add_argument("--builds", type=int, default=20)
    args = parser.parse_args()
    if args.case:
        case(args.case, Path(args.work))
        return None
    return args


LICENSES = ("MIT", "BSD-3-Clause", "Apache-2.0", "GPL-3.0-or-later", "LGPL-2.1-only")


def conda_forge_like(
    records: int, builds: int, depends: Callable[[int, int], list[str]]
) -> dict[str, Any]:
    """A linux-64 repodata document shaped like conda-forge's: ``builds`` records per
    name, four builds per version; ``depends(n, names)`` is what name number n needs."""
    names = max(1, records // builds)
    packages: dict[str, dict[str, Any]] = {}
    for i in range(records):
        n, b = i % names, i // names
        name = f"package-{n:06d}"
        packages[f"{name}-{b // 4}.{b % 4}.0-py312h{i:08x}_{b % 3}.conda"] = {
            "build": f"py312h{i:08x}_{b % 3}",
            "build_number": b % 3,
            "depends": depends(n, names),
            "license": LICENSES[n % len(LICENSES)],
            "md5": f"{i:032x}",
            "name": name,
            "sha256": f"{i:064x}",
            "size": 10_000 + (i * 7919) % 5_000_000,
            "subdir": "linux-64",
            "timestamp": 1_700_000_000_000 + i * 1000,
            "version": f"{b // 4}.{b % 4}.0",
        }
    return {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": packages}
