"""ferry sync against the wire (curl, 8 at a time) and a peer (conda-mirror), one run.

    .venv/bin/python -m benchmarks.bench_sync [--packages 2000] [--big 12] [--rounds 3]

Over nginx on loopback:
1. a cold sync of --packages small packages (20 kB each), interpreter start, indexing
   and publishing included, against ``curl`` fetching the same files with eight
   processes (``xargs -P8``), and against conda-mirror 0.10 (installed in its own
   venv under ~/.cache) on the same upstream;
2. the same packages as ten builds each of a tenth as many names, as real channels
   have them (one shard and one page per name);
   each cold sync also runs in one process (``processes: 1``), without the
   transfer workers, for what they bring, and without pages and shards (a page and a
   shard per name are two more files a package here, where curl writes one);
3. --big packages of 20 MB (ferry hashes every byte, curl none);
4. a re-sync with nothing to do: time and requests per subdir;
5. ``ferry --version`` and ``ferry --help``: start-up.

Each case runs --rounds times, alternating ferry and curl; the best of each is
compared (this machine's file creation times vary several-fold from minute to minute),
and beside it the median of each round's own ratio.
ferry makes what it wrote durable (``syncfs``) before it publishes the repodata that
names it, and curl does not: each case also times curl followed by ``sync -f`` on the
same file system, the wire's limit for bytes that survive a power cut. ``--on DIR``
writes the mirrors and curl's files under DIR (``/dev/shm``: tmpfs, where nothing
waits for a disk) instead of the temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks._common import table, timed
from tests import servers
from tests.pkgmaker import Spec, write_package
from tests.upstream import reindex

JOBS = 8
BARE = "outputs:\n  html: false\n  shards: false\n"  # one file a package, as curl's


def build_upstream(root: Path, count: int, size: int, names: int = 0) -> int:
    """``count`` packages of ``size`` random bytes, each of its own name, or of
    ``names`` names (ten builds of each, as real channels have many per name)."""
    total = 0
    for i in range(count):
        subdir = "noarch" if i % 5 == 0 else "linux-64"
        spec = Spec(
            f"pkg{i % names}" if names else f"pkg{i}",
            f"1.{i // names}" if names else f"1.{i % 9}",
            f"h{i}_0",
            subdir=subdir,
            noarch="generic" if subdir == "noarch" else None,
            files={"data.bin": os.urandom(size)},
        )
        total += write_package(root, spec, ".conda" if i % 4 else ".tar.bz2").stat().st_size
    reindex(root)
    return total


def package_urls(root: Path, url: str) -> list[str]:
    return sorted(
        f"{url}/{p.relative_to(root)}"
        for p in root.rglob("*")
        if p.name.endswith((".conda", ".tar.bz2"))
    )


def curl_parallel(urls: list[str], out: Path, durable: bool = False) -> None:
    """What the wire allows: curl, eight processes, no checks, no index; ``durable``:
    then ``sync -f``, the files on the disk as ferry leaves its own."""
    out.mkdir(parents=True)
    per = max(1, len(urls) // JOBS + 1)
    subprocess.run(
        ["xargs", f"-P{JOBS}", "-n", str(per), "curl", "-sf", "--remote-name-all"],
        input="\n".join(urls),
        text=True,
        check=True,
        cwd=out,
    )
    if durable:
        subprocess.run(["sync", "-f", str(out)], check=True)


def file_system(path: Path) -> str:
    """The type of the file system ``path`` is on, as /proc/mounts names it."""
    real, best, kind = str(path.resolve()), "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            point, fs = line.split()[1:3]
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fs
    return kind


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


def interleaved(rounds: int, *cases: Callable[[], None]) -> list[list[float]]:
    """Each case's time in each of ``rounds`` rounds, the cases interleaved."""
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(rounds):
        for i, case in enumerate(cases):
            times[i].append(timed(case))
    return times


def against(ferry: list[float], peer: list[float]) -> str:
    """ferry's best against the peer's, and the median of the rounds' own ratios: in
    an hour whose speed changes from one second to the next, the best of each may
    come from different minutes, a round's two runs from the same one."""
    rounds = statistics.median(f / p for f, p in zip(ferry, peer, strict=True))
    return f"ferry {min(ferry) / min(peer):.2f}x (rounds' median {rounds:.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--big", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--on", type=Path, help="write mirrors and curl's files here")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryDirectory(dir=args.on) as out_tmp,
    ):
        work, out = Path(tmp), Path(out_tmp)
        print(f"mirrors and curl's files on {file_system(out)} ({out})")
        nginx = servers.start_nginx(work / "nginx")
        # as a user runs it: with its modules' bytecode cached (some sandboxes set
        # PYTHONDONTWRITEBYTECODE, which makes every start compile them again)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["XDG_CACHE_HOME"] = str(work / "cache")
        rows = [("case", "seconds", "ratio", "aim")]
        ferry = [str(Path(sys.executable).parent / "ferry"), "-q", "sync"]
        try:
            names = args.packages // 10
            sizes = {
                "small": build_upstream(nginx.root / "small", args.packages, 20_000),
                "named": build_upstream(nginx.root / "named", args.packages, 20_000, names),
                "big": build_upstream(nginx.root / "big", args.big, 20_000_000) if args.big else 0,
            }
            os.sync()  # no run pays for writing back the packages just generated
            fresh = itertools.count()  # every run writes into a new directory: deleting
            # the last run's files first would bill this one for the disk's discards
            cases = (
                ("small", args.packages, "<= 3.0x", ""),
                ("named", args.packages, "", f" of {names} names"),
                ("big", args.big, "<= 2.5x", ""),
            )
            for kind, count, aim, of in cases:
                if not count:  # --big 0: that case not run
                    continue
                url = f"{nginx.url}/{kind}"
                job = work / f"{kind}.yaml"

                def cold(job: Path = job, url: str = url, extra: str = "") -> None:
                    job.write_text(
                        f"source: {url}\ntarget: {out / f'mirror-{next(fresh)}'}\n"
                        f"subdirs: [linux-64, noarch]\njobs: {JOBS}\n{extra}"
                    )
                    subprocess.run([*ferry, str(job)], check=True, env=env)

                urls = package_urls(nginx.root / kind, url)
                # ferry's cold sync between the two curl runs it is set against, so
                # that a round's ratios compare runs seconds apart
                times = interleaved(
                    args.rounds,
                    lambda urls=urls: curl_parallel(urls, out / f"curl-{next(fresh)}"),
                    cold,
                    lambda urls=urls: curl_parallel(urls, out / f"curl-{next(fresh)}", True),
                    lambda cold=cold: cold(extra="processes: 1\n"),
                    lambda cold=cold: cold(extra=BARE),
                )
                curl_s, ferry_s, durable_s, one_s, bare_s = map(min, times)
                label = f"{count} pkgs{of}, {sizes[kind] / 1e6:.0f} MB"
                rows.append((f"ferry cold sync, {label}", f"{ferry_s:.2f}", "", ""))
                rows.append(
                    (
                        "  the same in one process (processes: 1)",
                        f"{one_s:.2f}",
                        f"{one_s / ferry_s:.2f}x",
                        "",
                    )
                )
                rows.append(
                    (
                        "  the same without pages and shards",
                        f"{bare_s:.2f}",
                        f"{bare_s / ferry_s:.2f}x",
                        "",
                    )
                )
                rows.append(
                    (
                        f"  curl x{JOBS}, same files",
                        f"{curl_s:.2f}",
                        against(times[1], times[0]),
                        aim,
                    )
                )
                rows.append(
                    (
                        f"  curl x{JOBS}, then sync -f (durable, as ferry's)",
                        f"{durable_s:.2f}",
                        against(times[1], times[2]),
                        "",
                    )
                )
                if kind == "small":
                    log = Path(nginx.extra["log"])
                    before = len(log.read_text().splitlines())
                    again = timed(
                        lambda job=job: subprocess.run([*ferry, str(job)], check=True, env=env)
                    )
                    requests = len(log.read_text().splitlines()) - before
                    rows.append(
                        (
                            f"ferry re-sync, nothing to do ({requests} requests, 2 subdirs)",
                            f"{again:.2f}",
                            "",
                            "<= 0.5 s",
                        )
                    )
                    exe = conda_mirror()
                    if exe:
                        cm = timed(lambda url=url, exe=exe: run_conda_mirror(exe, url, out))
                        rows.append(
                            (
                                "  conda-mirror 0.10, same upstream",
                                f"{cm:.2f}",
                                f"{cm / ferry_s:.1f}x ferry",
                                "",
                            )
                        )
            for flag in ("--version", "--help"):
                command = [str(Path(sys.executable).parent / "ferry"), flag]
                runs = [
                    timed(lambda c=command: subprocess.run(c, check=True, env=env, stdout=-3))
                    for _ in range(15)
                ]
                rows.append(
                    (
                        f"ferry {flag} (median of 15)",
                        f"{statistics.median(runs):.2f}",
                        "",
                        "< 0.3 s",
                    )
                )
            table(rows)
        finally:
            servers.stop(nginx.proc)


def run_conda_mirror(exe: str, url: str, work: Path) -> None:
    shutil.rmtree(work / "cm", ignore_errors=True)
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


if __name__ == "__main__":
    main()
