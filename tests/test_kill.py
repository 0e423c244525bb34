"""The standing kill suite: every writer (sync, index, import) SIGKILLed at random
instants, over a local target and S3. After each kill, what a client reads must be
consistent; after a clean rerun, the channel has converged with no temp file left.

``FERRY_KILL_ROUNDS`` sets the kills per writer and target (CI: a handful).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conda_ferry.gateways import Gateway, GatewayOptions, open_gateway
from tests.helpers import records
from tests.mirrorcheck import assert_channel_files_current, assert_converged, check_channel
from tests.pkgmaker import Spec, package_bytes, write_package
from tests.servers import Server
from tests.upstream import reindex

ROUNDS = int(os.environ.get("FERRY_KILL_ROUNDS", "5"))
SHORT = max(1, ROUNDS // 2)  # for commands whose runs are short


@dataclass
class Target:
    url: str
    options: GatewayOptions
    flags: list[str]  # how the command line reaches it
    job_options: str  # how a job file reaches it

    def gateway(self) -> Gateway:
        return open_gateway(self.url, self.options)


@pytest.fixture(params=["localfs", "s3", "sftp"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "localfs":
        yield Target(str(tmp_path / "target"), GatewayOptions(), [], "")
        return
    if request.param == "sftp":  # through the system's ssh, as users run it
        sshd: Server = request.getfixturevalue("sshd")
        key, known = sshd.extra["key_file"], sshd.extra["known_hosts"]
        yield Target(
            f"{sshd.url}/kill-{tmp_path.name[-20:]}",
            GatewayOptions(key_file=key, known_hosts=known),
            ["--key-file", key, "--known-hosts", known],
            f"target_options: {{key_file: '{key}', known_hosts: '{known}'}}\n",
        )
        return
    moto: Server = request.getfixturevalue("moto")
    url = f"s3://ferry/kill-{tmp_path.name[-20:]}"
    yield Target(
        url,
        GatewayOptions(endpoint_url=moto.url),
        ["--endpoint-url", moto.url],
        f"target_options: {{endpoint_url: '{moto.url}'}}\n",
    )


def _ferry(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "conda_ferry", "-q", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _timed(*args: str) -> float:
    started = time.monotonic()
    proc = _ferry(*args)
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    return time.monotonic() - started


def kill_at_random(
    args: list[str],
    target: Target,
    span: float,
    between: Callable[[int], None] = lambda _: None,
    rounds: int = ROUNDS,
) -> int:
    """Start the writer ``ROUNDS`` times (more until one was killed), SIGKILL each at
    a random instant within ``span`` seconds, check the channel after every kill;
    returns how many were killed."""
    rng = random.Random()
    kills = round_ = 0
    while round_ < rounds or (kills == 0 and round_ < 3 * rounds):
        between(round_)
        proc = _ferry(*args)
        time.sleep(rng.uniform(0.02, span))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        with target.gateway() as gateway:
            check_channel(gateway)
        round_ += 1
    return kills


def _converge(args: list[str], target: Target) -> int:
    proc = _ferry(*args)
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    with target.gateway() as gateway:
        assert_converged(gateway)
        return check_channel(gateway)


def _upstream(root: Path, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        subdir = "noarch" if i % 4 == 0 else "linux-64"
        spec = Spec(
            f"p{i}",
            subdir=subdir,
            noarch="generic" if subdir == "noarch" else None,
            files={f"share/p{i}": os.urandom(30_000)},
        )
        write_package(root, spec, ".conda" if i % 3 else ".tar.bz2")


def _pruning_job(
    tmp_path: Path,
    target: Target,
    packages: int,
    extra: str = "",
    served: Server | None = None,
) -> tuple[Path, Path]:
    """An upstream of ``packages`` and a job mirroring it into ``target`` with prune;
    the upstream is a directory, or ``served`` by that web server."""
    upstream = (served.root if served else tmp_path) / f"upstream-{tmp_path.name}"
    _upstream(upstream, packages)
    reindex(upstream)
    source = f"{served.url}/{upstream.name}" if served else str(upstream)
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source: {source}\ntarget: {target.url}\nsubdirs: [linux-64, noarch]\n"
        f"prune: true\nmax_prune_fraction: 1\n{extra}{target.job_options}"
    )
    return job, upstream


@pytest.mark.parametrize("over", ["disk", "http", "workers"])
def test_sync_killed_at_random(
    target: Target, tmp_path: Path, over: str, request: pytest.FixtureRequest
) -> None:
    """From a directory; over HTTP, where one thread keeps the transfers in flight
    with requests sent ahead; and over HTTP by worker processes, which the kernel
    stops when the run is killed."""
    served = request.getfixturevalue("nginx") if over != "disk" else None
    extra = "processes: 2\n" if over == "workers" else ""
    job, upstream = _pruning_job(tmp_path, target, 30, extra, served)
    scratch = tmp_path / "scratch.yaml"
    scratch.write_text(
        job.read_text()
        .replace(target.url, str(tmp_path / "scratch"))
        .replace(target.job_options, "")
    )
    span = _timed("sync", str(scratch)) * 1.2

    def change(round_: int) -> None:  # upstream moves on between kills
        if round_ % 2:
            for path in sorted(upstream.glob(f"*/p{round_}-*")):
                path.unlink()
            _upstream(upstream, 2, 100 + 2 * round_)
            reindex(upstream)

    assert kill_at_random(["sync", str(job)], target, span, change) > 0
    assert _converge(["sync", str(job)], target) == len(list(upstream.glob("*/p*-*")))
    with target.gateway() as gateway:
        assert_channel_files_current(gateway)


def test_index_killed_at_random(target: Target, tmp_path: Path) -> None:
    def add(round_: int) -> None:
        with target.gateway() as gateway:
            for i in range(round_ * 6, round_ * 6 + 6):
                spec = Spec(f"c{i}", subdir="noarch", files={"blob": os.urandom(20_000)})
                gateway.write_bytes(f"noarch/{spec.stem}.conda", package_bytes(spec))

    add(99)
    span = _timed("index", target.url, *target.flags) * 1.5
    assert kill_at_random(["index", target.url, *target.flags], target, span, add) > 0
    with target.gateway() as gateway:
        added = len([f for f in gateway.files("noarch") if f.name.endswith(".conda")])
    assert _converge(["index", target.url, *target.flags], target) == added


def test_import_killed_at_random(target: Target, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _upstream(outside, 24)
    reindex(outside)
    first = tmp_path / "b1"
    assert _timed("export", str(outside), str(first)) > 0
    for path in sorted(outside.glob("*/p1*-*")):
        path.unlink()
    _upstream(outside, 6, 50)
    reindex(outside)
    assert _timed("snapshot", "create", str(outside), "s1") > 0  # b2 carries it
    second = tmp_path / "b2"
    assert _timed("export", str(outside), str(second)) > 0

    scratch = tmp_path / "scratch"
    span = _timed("import", str(first), "--to", str(scratch)) * 1.2
    for bundle in (first, second):
        args = ["import", str(bundle), "--to", target.url, *target.flags]
        kill_at_random(args, target, span)
        _converge(args, target)
    with target.gateway() as gateway:
        names = {f.name for s in ("linux-64", "noarch") for f in gateway.files(s)}
    expected = {p.name for p in outside.glob("*/p*-*")}
    assert expected <= names
    with target.gateway() as gateway:
        assert gateway.exists("snapshots/s1/snapshot.json")
    shutil.rmtree(scratch)


def test_snapshot_commands_killed_at_random(target: Target, tmp_path: Path) -> None:
    """create, restore and delete killed at any instant: the live channel and every
    snapshot (complete or not) name only present, correct files, even after the
    upstream pruned what a snapshot holds."""
    job, upstream = _pruning_job(tmp_path, target, 24, "grace: 0s\n")
    _converge(["sync", str(job)], target)
    snapshot = ["snapshot", "create", target.url, "s1", *target.flags]
    span = _timed("snapshot", "create", target.url, "scratch", *target.flags) * 1.2
    kill_at_random(snapshot, target, span, rounds=SHORT)
    subprocess.run([sys.executable, "-m", "conda_ferry", "-q", *snapshot], check=False)
    with target.gateway() as gateway:
        assert gateway.exists("snapshots/s1/snapshot.json")

    for path in sorted(upstream.glob("*/p1*-*")):  # what s1 holds leaves upstream
        path.unlink()
    reindex(upstream)
    _converge(["sync", str(job)], target)  # prunes with no grace: s1's files stay

    restore = ["snapshot", "restore", target.url, "s1", *target.flags]
    kill_at_random(restore, target, span, rounds=SHORT)
    _converge(restore, target)
    with target.gateway() as gateway:
        for subdir in ("linux-64", "noarch"):
            live = gateway.read_bytes(f"{subdir}/repodata.json")
            held = gateway.read_bytes(f"snapshots/s1/{subdir}/repodata.json")
            assert records(live) == records(held)

    _converge(["sync", str(job)], target)
    _timed("snapshot", "delete", target.url, "scratch", *target.flags)
    delete = ["snapshot", "delete", target.url, "s1", *target.flags]
    kill_at_random(delete, target, span, rounds=SHORT)
    subprocess.run([sys.executable, "-m", "conda_ferry", "-q", *delete], check=False)
    _converge(["gc", target.url, "--now", *target.flags], target)
    with target.gateway() as gateway:
        left = {f.name for s in ("linux-64", "noarch") for f in gateway.files(s)}
        assert not any(name.startswith("p1") for name in left), left
        assert not [f for f in gateway.list("", recursive=True) if f.path.startswith("snapshots/")]
