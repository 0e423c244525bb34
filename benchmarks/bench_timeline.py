"""Where a cold sync leaves cores idle: its phases, and how busy the machine was in each.

    .venv/bin/python -m benchmarks.bench_timeline [--packages 2000] [--rounds 3] [--on DIR]

A cold sync of --packages small packages over nginx on loopback (as bench_sync's
first case), with the machine's busy time read from ``/proc/stat`` every 10 ms. The
phases are read off the mirror's own files afterwards: the start-up ends when the
first package file is made, the transfer when the last one is, the commit (repodata,
shards, pages, state) when the process exits. A phase whose cores are not all busy
could be shorter with more work beside it; a phase with every core busy is shortened
only by less work. ``curl`` x8 on the same files is timed the same way, for its
busy cores. The run with the best total is printed.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._common import table
from benchmarks.bench_sync import JOBS, build_upstream, curl_parallel, package_urls
from tests import servers

TICK = 0.01
PACKAGES = (".conda", ".tar.bz2")


class Busy:
    """Samples of (time, busy core-seconds so far), read from ``/proc/stat`` in a
    thread; the machine's, not one process's: the workers, nginx and the kernel's
    work for them all count."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._hz = os.sysconf("SC_CLK_TCK")

    def _busy(self) -> float:
        with open("/proc/stat") as stat:
            ticks = [int(t) for t in stat.readline().split()[1:]]
        # user, nice, system, irq, softirq (guest time is inside user already; idle,
        # iowait and the hypervisor's steal are no work done here)
        return sum(ticks[i] for i in (0, 1, 2, 5, 6)) / self._hz

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._busy()))
            time.sleep(TICK)

    def __enter__(self) -> Busy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), self._busy()))

    def between(self, start: float, end: float) -> float:
        """Busy core-seconds from ``start`` to ``end``, interpolated between samples."""

        def at(when: float) -> float:
            before = after = self.samples[0]
            for sample in self.samples:
                if sample[0] <= when:
                    before = sample
                else:
                    after = sample
                    break
            else:
                return self.samples[-1][1]
            span = after[0] - before[0]
            share = (when - before[0]) / span if span > 0 else 0.0
            return before[1] + share * (after[1] - before[1])

        return at(end) - at(start)


def phases_of_sync(command: list[str], target: Path) -> tuple[list[tuple[str, float, float]], Busy]:
    """(phase, start, end) of one cold sync, and the busy samples over it."""
    with Busy() as busy:
        started = time.time()
        subprocess.run(command, check=True)
        ended = time.time()
    made = sorted(p.stat().st_mtime for p in target.rglob("*") if p.name.endswith(PACKAGES))
    first, last = made[0], made[-1]
    phases = [
        ("start-up: to the first package", started, first),
        ("transfer: to the last package", first, last),
        ("commit: repodata, shards, pages", last, ended),
    ]
    return phases, busy


def timed_busy(run: Callable[[], None]) -> tuple[float, float]:
    with Busy() as busy:
        started = time.time()
        run()
        ended = time.time()
    return ended - started, busy.between(started, ended)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--on", type=Path, help="write the mirrors and curl's files here")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    ferry = str(Path(sys.executable).parent / "ferry")
    with (
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryDirectory(dir=args.on) as out_tmp,
    ):
        work, out = Path(tmp), Path(out_tmp)
        env["XDG_CACHE_HOME"] = str(work / "cache")
        nginx = servers.start_nginx(work / "nginx")
        try:
            build_upstream(nginx.root / "small", args.packages, 20_000)
            os.sync()
            url = f"{nginx.url}/small"
            urls = package_urls(nginx.root / "small", url)
            best: tuple[float, list[tuple[str, float, float]], Busy] | None = None
            curl_best: tuple[float, float] | None = None
            for round_ in range(args.rounds):
                target = out / f"mirror-{round_}"
                job = work / f"job-{round_}.yaml"
                job.write_text(
                    f"source: {url}\ntarget: {target}\nsubdirs: [linux-64, noarch]\njobs: {JOBS}\n"
                )
                command = [ferry, "-q", "sync", str(job)]
                phases, busy = phases_of_sync(command, target)
                total = phases[-1][2] - phases[0][1]
                if best is None or total < best[0]:
                    best = (total, phases, busy)
                curl = timed_busy(functools.partial(curl_parallel, urls, out / f"curl-{round_}"))
                if curl_best is None or curl[0] < curl_best[0]:
                    curl_best = curl
        finally:
            servers.stop(nginx.proc)
    assert best is not None and curl_best is not None
    total, phases, busy = best
    rows: list[tuple[str, ...]] = [
        ("phase", "seconds", f"cores busy (of {cores})", "idle core-seconds")
    ]
    for name, start, end in [*phases, ("the whole cold sync", phases[0][1], phases[-1][2])]:
        span = max(end - start, 1e-9)
        used = busy.between(start, end)
        rows.append(
            (name, f"{span:.3f}", f"{used / span:.2f}", f"{max(0.0, cores * span - used):.3f}")
        )
    seconds, used = curl_best
    rows.append((f"curl x{JOBS}, same files", f"{seconds:.3f}", f"{used / seconds:.2f}", ""))
    print(f"cold sync of {args.packages} small packages, best of {args.rounds}")
    table(rows)


if __name__ == "__main__":
    main()
