"""Kill ferry sync with SIGKILL at many instants: the mirror stays consistent, and a
rerun finishes the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import ferry
from tests.mirrorcheck import assert_consistent
from tests.pkgmaker import Spec, write_package
from tests.servers import Server
from tests.upstream import build_upstream, job_yaml, reindex


def run_ferry(job: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "conda_ferry", "sync", str(job)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


@pytest.mark.slow
def test_sigkill_at_many_points_leaves_a_consistent_mirror(nginx: Server, tmp_path: Path) -> None:
    root = nginx.root / f"crash-{tmp_path.name}"
    for i in range(40):
        payload = {f"share/p{i}/blob": os.urandom(40_000)}
        subdir = "noarch" if i % 4 == 0 else "linux-64"
        write_package(
            root,
            Spec(
                f"p{i}",
                "1.0",
                "0",
                subdir=subdir,
                noarch="generic" if subdir == "noarch" else None,
                files=payload,
            ),
            ".conda" if i % 3 else ".tar.bz2",
        )
    reindex(root)
    proxy = FaultProxy(nginx.port)
    proxy.default = "slow:1500000"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    mirror = tmp_path / "mirror"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source: http://127.0.0.1:{proxy.port}/{root.name}\n"
        f"target: {mirror}\nsubdirs: [linux-64, noarch]\njobs: 2\nprune: true\n"
    )
    try:
        kills = 0
        for delay in [0.05, 0.15, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 0.4, 0.8, 1.2, 1.6]:
            if delay == 0.4:  # upstream changes mid-way: removals and additions too
                for i in range(0, 40, 5):
                    for path in root.rglob(f"p{i}-1.0-0.*"):
                        path.unlink()
                write_package(root, Spec("late", "1.0", "0", subdir="linux-64"))
                reindex(root)
            proc = run_ferry(job, env)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            assert_consistent(mirror)
        assert kills >= 3  # each rerun resumes, so later ones finish sooner
        proxy.default = "pass"
        final = ferry("sync", str(job))
        assert final.exit_code == 0, final.output
        assert assert_consistent(mirror) == 40 - 8 + 1
        leftovers = [p.name for p in mirror.rglob("*.part")]
        assert leftovers == []
        assert ferry("verify", str(mirror)).exit_code == 0
    finally:
        proxy.close()


def test_what_a_run_killed_writing_the_channels_own_state_left_is_swept(tmp_path: Path) -> None:
    """Over SFTP and FTP a file is written under a temp name and renamed: a run killed
    between the two left the temp of ``.ferry/channel.json`` or of the marker that
    the channel's files are owed (found by the kill suite over SFTP), and the next
    run, which wrote its own under another name, left it there for good."""
    build_upstream(tmp_path / "up")
    mirror = tmp_path / "mirror"
    left = [
        mirror / ".ferry" / f".{name}.0123456789ab.part"
        for name in ("channel.json", "channeldata.owed")
    ]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{")
    job = job_yaml(tmp_path / "job.yaml", str(tmp_path / "up"), str(mirror))
    assert ferry("sync", str(job)).exit_code == 0
    assert [path for path in left if path.exists()] == []
    assert_consistent(mirror)
