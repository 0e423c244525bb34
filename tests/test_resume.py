"""An interrupted sync keeps what it verified: the rerun fetches only what is missing."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conda_ferry.mirror import sync
from tests.faultproxy import FaultProxy
from tests.helpers import ferry, load
from tests.mirrorcheck import assert_consistent
from tests.pkgmaker import Spec, write_package
from tests.servers import Server, access_log
from tests.upstream import job_yaml, reindex

COUNT = 40


def _package_gets(nginx: Server, channel: str) -> int:
    return sum(
        1
        for line in access_log(nginx)
        if f"GET /{channel}/" in line and (".conda " in line or ".tar.bz2 " in line)
    )


def _landed(mirror: Path) -> int:
    return sum(1 for p in mirror.glob("*/*") if p.name.endswith((".conda", ".tar.bz2")))


@pytest.mark.parametrize(
    "sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_an_interrupted_sync_resumes_where_it_stopped(
    nginx: Server, tmp_path: Path, sig: int, code: int
) -> None:
    channel = f"resume-{tmp_path.name}"
    root = nginx.root / channel
    for i in range(COUNT):
        subdir = "noarch" if i % 5 == 0 else "linux-64"
        spec = Spec(
            f"r{i}",
            subdir=subdir,
            noarch="generic" if subdir == "noarch" else None,
            files={"blob": os.urandom(60_000)},
        )
        write_package(root, spec)
    reindex(root)
    proxy = FaultProxy(nginx.port)
    proxy.default = "slow:300000"
    mirror = tmp_path / "mirror"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source: http://127.0.0.1:{proxy.port}/{channel}\ntarget: {mirror}\n"
        "subdirs: [linux-64, noarch]\njobs: 2\n"
    )
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conda_ferry", "sync", str(job)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while _landed(mirror) < COUNT // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == code, err.decode()
        errors = [line for line in err.decode().splitlines() if "ferry: error:" in line]
        assert len(errors) == 1, err.decode()
        assert not list(mirror.rglob("*.part")) and not list(mirror.rglob(".ferry.lock"))
        missing = COUNT - _landed(mirror)
        assert 0 < missing < COUNT

        before = _package_gets(nginx, channel)
        proxy.default = "pass"
        rerun = ferry("sync", str(job))
    finally:
        proxy.close()
    assert rerun.exit_code == 0, rerun.stderr
    gets = _package_gets(nginx, channel) - before
    print(f"interrupted at {COUNT - missing}/{COUNT}: the rerun fetched {gets} packages")
    assert gets <= missing + math.ceil(COUNT * 0.05), (gets, missing)
    assert assert_consistent(mirror) == COUNT


def test_a_run_stopped_while_committing_keeps_the_other_subdirs_files(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every subdir's files come in one transfer, then each subdir is committed in
    turn: stopped in the first commit, the run has journaled the others' files, and
    the rerun adopts them instead of reading them again."""
    root, url = upstream
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror))

    def stopped(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(sync, "Committing", stopped)
        assert ferry("sync", str(job)).exit_code == 130
    noarch = {p.name for p in (root / "noarch").iterdir() if p.name.endswith(".conda")}
    assert noarch and set(load(mirror / ".ferry" / "noarch.json")["verified"]) == noarch
    rerun = ferry("sync", str(job))
    assert rerun.exit_code == 0, rerun.output
    assert assert_consistent(mirror) == 8
