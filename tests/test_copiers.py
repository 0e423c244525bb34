"""Transfers shared among worker processes (mirror/copiers.py), over a real nginx:
forked or started fresh, they land, fail and log as one process would, and a worker
that dies costs time, not files."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conda_ferry.gateways import is_temp, open_gateway
from conda_ferry.gateways.base import FileInfo
from conda_ferry.gateways.copy import SMALL, Copied
from conda_ferry.mirror import copiers, copying, sync
from conda_ferry.mirror.progress import Progress
from conda_ferry.mirror.transfer import transfer
from tests.faultproxy import FaultProxy
from tests.helpers import ferry, load
from tests.mirrorcheck import assert_consistent
from tests.pkgmaker import Spec, write_package
from tests.servers import Server
from tests.upstream import job_yaml, reindex


@pytest.fixture
def shares(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the transfers the workers took (the parent's side of them)."""
    taken: list[int] = []
    share = copiers.Helpers.share

    def counted(self: copiers.Helpers, *args: Any, **kw: Any) -> None:
        workers = self._workers
        taken.append(self.count if workers is None else sum(w.alive for w in workers))
        share(self, *args, **kw)

    monkeypatch.setattr(copiers.Helpers, "share", counted)
    return taken


@pytest.fixture
def other_thread() -> Iterator[None]:
    """A thread besides the main one: workers must then start fresh, not forked."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    yield
    stop.set()
    thread.join()


@pytest.mark.parametrize("start", ["forked", "fresh"])
def test_workers_land_fail_and_log_as_one_process(
    upstream: tuple[Path, str],
    tmp_path: Path,
    shares: list[int],
    start: str,
    request: pytest.FixtureRequest,
) -> None:
    if start == "fresh":
        request.getfixturevalue("other_thread")
    assert (threading.active_count() == 1) == (start == "forked")  # the path we test
    root, url = upstream
    victim = root / "linux-64/zlib-1.3.1-h0_0.conda"
    good = victim.read_bytes()
    victim.write_bytes(good[:500] + bytes([good[500] ^ 0xFF]) + good[501:])  # same size
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror), "processes: 2\n")
    result = ferry("sync", str(job), "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 3, result.output
    assert shares == [2]  # both subdirs in one transfer, shared by two workers
    # the worker's warning, logged by the parent, then the failure in the summary
    assert "failed its check; fetching it again" in result.output
    report = load(tmp_path / "r.json")
    assert {f for s in report["subdirs"] for f in s["failures"]} == {"zlib-1.3.1-h0_0.conda"}
    assert "sha256" in result.output
    assert "ended early" not in result.output
    assert assert_consistent(mirror) == 7
    # what the workers copied counts, each file for its own subdir
    assert all(s["bytes"] > 0 and s["added"] for s in report["subdirs"]), report["subdirs"]
    victim.write_bytes(good)
    healed = ferry("sync", str(job))
    assert healed.exit_code == 0, healed.output
    assert assert_consistent(mirror) == 8


def test_a_commit_made_while_its_files_transfer_is_taken_only_where_all_landed(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each subdir's commit is made in a thread while the workers copy its files, as
    if all land; where one failed, its subdir's is made again after the transfer,
    and nothing published names the failed file (its page neither)."""
    made: list[tuple[str, str]] = []
    make = sync.SyncRun._made

    def noted(self: sync.SyncRun, target: Any, staged: Any, *args: Any, **kw: Any) -> Any:
        made.append((staged.subdir, threading.current_thread().name))
        return make(self, target, staged, *args, **kw)

    monkeypatch.setattr(sync.SyncRun, "_made", noted)
    root, url = upstream
    ahead = "ferry-commit-ahead"
    job = job_yaml(tmp_path / "job.yaml", url, str(tmp_path / "mirror"), "processes: 2\n")
    result = ferry("sync", str(job))
    assert result.exit_code == 0, result.output
    assert made == [("linux-64", ahead), ("noarch", ahead)]
    assert assert_consistent(tmp_path / "mirror") == 8

    made.clear()
    victim = root / "linux-64/zlib-1.3.1-h0_0.conda"
    victim.write_bytes(victim.read_bytes()[:-1] + b"!")  # same size, wrong bytes
    mirror = tmp_path / "again"
    job = job_yaml(tmp_path / "again.yaml", url, str(mirror), "processes: 2\n")
    assert ferry("sync", str(job)).exit_code == 3
    assert made == [("linux-64", ahead), ("noarch", ahead), ("linux-64", "MainThread")]
    assert assert_consistent(mirror) == 7
    pages = [p.read_text() for p in (mirror / "linux-64").rglob("*.html")]
    assert pages and not [page for page in pages if "zlib-1.3.1-h0_0.conda" in page]
    assert not [p for p in mirror.rglob(".*") if p.is_dir() and p.name != ".ferry"]


def test_a_worker_that_dies_costs_time_not_files(
    upstream: tuple[Path, str], tmp_path: Path, shares: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forked worker dies (as if out of memory) when it reaches one file: what it
    had not reported is copied by the others or the main process."""
    parent = os.getpid()

    def dying(copy: Callable[..., Any]) -> Callable[..., Any]:
        def copy_or_die(source: Any, path: str, *args: Any, **kw: Any) -> Any:
            if os.getpid() != parent and path.endswith("zlib-1.3.1-h0_0.conda"):
                os._exit(9)
            return copy(source, path, *args, **kw)

        return copy_or_die

    for name in ("copy_file", "copy_prefetched"):  # whichever way the file is copied
        monkeypatch.setattr(copying, name, dying(getattr(copying, name)))
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", upstream[1], str(mirror), "processes: 2\n")
    result = ferry("sync", str(job))
    assert result.exit_code == 0, result.output
    assert shares == [2]  # one transfer for both subdirs
    assert "ended early" in result.output
    assert assert_consistent(mirror) == 8
    assert not [p for p in mirror.rglob("*") if is_temp(p.name)]


def test_one_process_where_asked_or_not_worth_it(
    upstream: tuple[Path, str], tmp_path: Path, shares: list[int]
) -> None:
    outputs = []
    for i, extra in enumerate(["processes: 1\n", ""]):  # the demo channel is small
        mirror = tmp_path / f"mirror{i}"
        job = job_yaml(tmp_path / f"job{i}.yaml", upstream[1], str(mirror), extra)
        result = ferry("sync", str(job))
        assert result.exit_code == 0, result.output
        assert assert_consistent(mirror) == 8
        subdirs = [mirror / "linux-64", mirror / "noarch"]  # the front page shows times
        outputs.append(
            {
                p.relative_to(mirror): p.read_bytes()
                for d in subdirs
                for p in d.rglob("*")
                if p.suffix in (".html", ".zst") and p.name != "repodata.json.zst"
            }
        )
    assert shares == []
    # the second wrote its shards and package pages from workers (forked, unused for
    # copying), each a part of the names: the same files, the same shard index
    assert outputs[0] == outputs[1]
    assert len([p for p in outputs[0] if p.parent.name == "shards"]) >= 6
    assert len([p for p in outputs[0] if p.parent.name == "pages"]) >= 6


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
    return found


def _writing(pids: set[int], into: Path) -> bool:
    """Whether one of ``pids`` has a file open below ``into`` (unnamed files too)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(str(into)):
                        return True
    return False


def _gone(pids: set[int], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_workers_stop_with_the_run(nginx: Server, tmp_path: Path, how: signal.Signals) -> None:
    """Stopped, the run stops its workers; killed outright, the kernel stops them.
    Either way their copies in flight are abandoned and their temp files removed."""
    root = nginx.root / f"slow-{tmp_path.name[-12:]}"
    for i in range(6):
        # larger than what is held whole (copy_prefetched): written as it comes
        spec = Spec(f"big{i}", files={"data.bin": os.urandom(SMALL + 100_000)})
        write_package(root, spec, ".conda")
    reindex(root)
    proxy = FaultProxy(nginx.port)
    proxy.default = "slow:40000"
    try:
        mirror = tmp_path / "mirror"
        url = f"http://127.0.0.1:{proxy.port}/{root.name}"
        job = job_yaml(tmp_path / "job.yaml", url, str(mirror), "processes: 2\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "conda_ferry", "-q", "sync", str(job)],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while proc.poll() is None and time.monotonic() < deadline:
            workers = _children(proc.pid)
            if len(workers) == 2 and _writing(workers, mirror):
                break  # copies are in flight
            time.sleep(0.05)
        else:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"workers {workers}, exit {proc.returncode}: {err.decode()}")
        proc.send_signal(how)
        proc.wait(30)
        assert proc.returncode == (-signal.SIGKILL if how == signal.SIGKILL else 143)
        assert _gone(workers)
        assert not [p for p in mirror.rglob("*") if is_temp(p.name)]
        with contextlib.suppress(FileNotFoundError):
            assert "Traceback" not in proc.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        proxy.close()


PARENT = os.getpid()


def _whose(target: Any, word: str) -> tuple[int, str, str]:
    return os.getpid(), word, target.url


def _fails(target: Any) -> None:
    raise FileNotFoundError(2, "No such file", "somewhere")


def _dies_in_a_worker(target: Any) -> int:
    if os.getpid() != PARENT:
        os._exit(9)
    return os.getpid()


def test_a_job_aside_runs_in_a_worker_or_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The package pages' way beside the repodata: a job runs in an idle worker on its
    own gateway and comes back, result or error; with no worker, or one that dies on
    it, it runs here."""
    assert threading.active_count() == 1  # the workers are forked
    target = open_gateway(str(tmp_path))
    with copiers.Helpers(2) as helpers:
        pid, word, url = helpers.aside(_whose, target, "pages")()
        assert pid != os.getpid() and (word, url) == ("pages", target.url)
        with pytest.raises(FileNotFoundError, match="somewhere"):
            helpers.aside(_fails, target)()
        assert helpers.aside(_dies_in_a_worker, target)() == os.getpid()
        assert "a worker ended early (exit status 9)" in caplog.text
        assert helpers.aside(_whose, target, "again")()[0] != os.getpid()  # the other
    with copiers.Helpers(1) as alone:
        assert alone.aside(_whose, target, "here")()[0] == os.getpid()


def test_jobs_aside_queue_in_their_workers_and_each_answer_finds_its_job(
    tmp_path: Path,
) -> None:
    """The next subdir's parts wait behind the last one's in the workers (each worker
    given the next job while it has the fewest), and each answer reaches the job it
    belongs to, whichever job is asked for first."""
    assert threading.active_count() == 1  # the workers are forked
    target = open_gateway(str(tmp_path))
    with copiers.Helpers(2) as helpers:
        asked = [helpers.aside(_whose, target, f"job{i}") for i in range(6)]
        assert helpers.spare() == 2  # both still take jobs aside
        order = (5, 0, 3, 1, 4, 2)  # the last job of one worker asked for first
        answers = {i: asked[i]() for i in order}
    assert [answers[i][1] for i in range(6)] == [f"job{i}" for i in range(6)]
    pids = [answers[i][0] for i in range(6)]
    assert os.getpid() not in pids
    assert pids[0] == pids[2] == pids[4] != pids[1] == pids[3] == pids[5]


def test_answers_that_arrive_in_one_read_are_each_heard() -> None:
    """A worker's answers to two jobs aside can reach the parent in one read: the
    second waits in the buffer, not behind a read that would never return."""
    read, write = os.pipe()
    worker = copiers._Worker(copiers._Forked(0), io.BytesIO(), os.fdopen(read, "rb"))
    with os.fdopen(write, "wb") as out:
        out.write(
            _frame("result", 1)
            + _frame("log", "ferry.sync", logging.INFO, "hi")
            + _frame("result", 2)
        )
    assert worker.outcome() == ("result", 1)
    assert worker.outcome() == ("result", 2)
    assert worker.outcome() is None  # the worker's end


def _frame(*message: Any) -> bytes:
    buffer = io.BytesIO()
    copiers.send(buffer, *message)
    return buffer.getvalue()


class _Listener(copiers._Worker):
    """A worker that only records what it is sent."""

    def __init__(self) -> None:
        self.alive, self.busy, self.drained = True, True, False
        self.queued: dict[str, Any] = {}
        self.said: list[tuple[Any, ...]] = []

    def send(self, *message: Any) -> None:
        self.said.append(message)


@pytest.mark.parametrize(("files", "size", "split"), [(3, 20 << 20, [2, 1]), (9, 1, [5, 4])])
def test_a_small_transfer_is_split_equally_and_every_worker_told_to_end(
    files: int, size: int, split: list[int]
) -> None:
    """A worker waits for its window of files or the word that there are no more:
    given fewer, it must be told, or the run hangs."""
    workers = [_Listener(), _Listener()]
    work = [(f"p{i}.conda", {"size": size}) for i in range(files)]
    feed = copiers._Feed(work, 5, list(workers))
    for worker in workers:
        feed.top_up(worker)
    assert [len(w.queued) for w in workers] == split
    assert all(w.drained and w.said[-1] == ("drain",) for w in workers)


@pytest.mark.parametrize("mtime, etag", [(1.7e9, '"abc"'), (None, None)])
def test_a_landed_file_crosses_the_pipe_as_it_was(mtime: float | None, etag: str | None) -> None:
    """What a worker reports of each file it lands is what the parent receives."""
    read, write = os.pipe()
    landed = [
        ("a-1-0.conda", Copied(FileInfo("linux-64/a-1-0.conda", 7, mtime, etag), 7, "0" * 64))
    ]
    with os.fdopen(write, "wb") as out:
        copiers.send(out, "landed", landed)
    with os.fdopen(read, "rb") as inbox:
        assert copiers.receive(inbox) == ("landed", landed)


def test_the_largest_files_are_copied_first(tmp_path: Path) -> None:
    """A large file left to the end would keep one worker busy while the others had
    nothing left to take."""
    sizes = {"a-1-0.conda": 10, "b-1-0.conda": 3000, "c-1-0.conda": 200, "d-1-0.conda": 200}
    for name, size in sizes.items():
        (tmp_path / "up" / "noarch").mkdir(parents=True, exist_ok=True)
        (tmp_path / "up" / "noarch" / name).write_bytes(b"x" * size)
    landed: list[str] = []
    with open_gateway(str(tmp_path / "up")) as up, open_gateway(str(tmp_path / "m")) as down:
        result = transfer(
            copying.Route(up, "noarch/", down, "noarch/"),
            {name: {"size": size} for name, size in sizes.items()},
            "noarch",
            1,  # one copy at a time: they land in the order they were taken
            Progress(),
            lambda name, copied: landed.append(name),
        )
    assert not result.failed
    assert landed == ["b-1-0.conda", "c-1-0.conda", "d-1-0.conda", "a-1-0.conda"]
