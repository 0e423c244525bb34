"""Where a cold sync leaves cores idle: its phases, and how busy the machine was in each.

    .venv/bin/python -m benchmarks.bench_timeline [--packages 2000] [--size 20000]
        [--rounds 3] [--on DIR]

A cold sync of --packages packages of --size bytes over nginx on loopback (as
bench_sync's first case; ``--packages 12 --size 20000000`` as its third), with the
machine's busy time read from ``/proc/stat`` every 10 ms. The phases are read off the
mirror's own files afterwards: the start-up ends when the first package file is made,
the transfer when the last one is, the commit (repodata, shards, pages, state) when
the process exits. A phase whose cores are not all busy
could be shorter with more work beside it; a phase with every core busy is shortened
only by less work. ``curl`` x8 on the same files is timed the same way, for its
busy cores. The run with the best total is printed.
"""

from __future__ import annotations

import argparse
import bisect
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
            i = bisect.bisect_right(self.samples, when, key=lambda sample: sample[0])
            if i == 0 or i == len(self.samples):
                return self.samples[min(i, len(self.samples) - 1)][1]
            (t0, b0), (t1, b1) = self.samples[i - 1], self.samples[i]
            return b0 + (when - t0) / (t1 - t0) * (b1 - b0) if t1 > t0 else b0

        return at(end) - at(start)


def busy_run(run: Callable[[], object]) -> tuple[float, float, Busy]:
    """When ``run()`` started and ended, and the machine's busy samples over it."""
    with Busy() as busy:
        started = time.time()
        run()
        ended = time.time()
    return started, ended, busy


def phases_of_sync(
    command: list[str], env: dict[str, str], target: Path
) -> tuple[list[tuple[str, float, float]], Busy]:
    """(phase, start, end) of one cold sync, and the busy samples over it."""
    started, ended, busy = busy_run(lambda: subprocess.run(command, check=True, env=env))
    made = sorted(p.stat().st_mtime for p in target.rglob("*") if p.name.endswith(PACKAGES))
    phases = [
        ("start-up: to the first package", started, made[0]),
        ("transfer: to the last package", made[0], made[-1]),
        ("commit: repodata, shards, pages", made[-1], ended),
    ]
    return phases, busy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=20_000, help="bytes of each package")
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
            build_upstream(nginx.root / "small", args.packages, args.size)
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
                phases, busy = phases_of_sync(command, env, target)
                total = phases[-1][2] - phases[0][1]
                if best is None or total < best[0]:
                    best = (total, phases, busy)
                began, done, curl_busy = busy_run(
                    functools.partial(curl_parallel, urls, out / f"curl-{round_}")
                )
                curl = (done - began, curl_busy.between(began, done))
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
    print(f"cold sync of {args.packages} packages of {args.size:,} bytes, best of {args.rounds}")
    table(rows)


if __name__ == "__main__":
    main()
