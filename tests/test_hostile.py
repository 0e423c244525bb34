"""Inputs that lie: upstreams, packages, bundles and URLs built to hurt the mirror.

Each test here failed before its fix; the fuzz and kill suites that keep the classes
covered live in test_fuzz.py and test_sync_crash.py.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import logging
import os
import random
import shutil
import string
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import zstandard

from conda_ferry.gateways import redact, redact_text
from tests.faultproxy import FaultProxy
from tests.fuzzing import _s3_request, _scripted_server
from tests.helpers import ferry, load
from tests.mirrorcheck import assert_consistent
from tests.pkgmaker import Spec, package_bytes, write_package
from tests.servers import Server
from tests.upstream import build_upstream, edit_repodata, job_yaml, reindex

SECRET_CHARS = string.ascii_letters + string.digits + "#?/@:%!$&'()*+,;=~-._"


def _secret(rng: random.Random) -> str:
    return "Leak" + "".join(rng.choice(SECRET_CHARS) for _ in range(rng.randint(4, 14)))


def _shapes(secret: str) -> list[str]:
    return [
        f"ftp://ferry:{secret}@host/",
        f"sftp://root:{secret}@host:22/srv/",
        f"https://user:{secret}@host/path/?a=1",
        f"https://host/t/{secret.replace('/', '')}/conda-forge/",
        f"https://host/x?token={secret.replace('&', '')}",
        f"https://h/k?X-Amz-Signature={secret.replace('&', '')}&b=2",
        f"https://h/k?X-Amz-Credential={secret.replace('&', '')}",
    ]


def test_redaction_holds_for_every_url_shape() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        secret = _secret(rng)
        for url in _shapes(secret):
            shown = redact(url)
            assert "Leak" not in shown, (url, shown)
            assert "Leak" not in redact_text(f"failed: {url} (retry)"), url


@pytest.mark.parametrize(
    "url", ["ftp://ferry:Zq9#Leak1@127.0.0.1:9/", "sftp://root:pa/ss?Leak6@127.0.0.1:9/"]
)
def test_ls_never_prints_the_password(url: str) -> None:
    result = ferry("-v", "ls", "--retries", "1", url)
    assert result.exit_code != 0
    assert "Leak" not in result.output + result.stderr, result.output + result.stderr


def _rebase(root: Path, subdir: str, base_url: str) -> None:
    def edit(document: dict[str, Any]) -> None:
        document["info"] = {"subdir": subdir, "base_url": base_url}
        document["repodata_version"] = 2

    edit_repodata(root, subdir, edit)


@pytest.fixture
def split_upstream(nginx: Server, tmp_path: Path) -> tuple[Path, Path]:
    """An upstream on nginx whose packages live in a sibling directory."""
    root = nginx.root / f"split-{tmp_path.name}"
    build_upstream(root)
    packages = nginx.root / f"pkgs-{tmp_path.name}"
    for subdir in ("linux-64", "noarch"):
        (packages / subdir).mkdir(parents=True)
        for path in [*(root / subdir).glob("*.conda"), *(root / subdir).glob("*.tar.bz2")]:
            path.rename(packages / subdir / path.name)
    return root, packages


def test_a_remote_upstream_cannot_send_the_mirror_to_the_local_disk(
    nginx: Server, split_upstream: tuple[Path, Path], tmp_path: Path
) -> None:
    root, packages = split_upstream
    _rebase(root, "linux-64", f"file://{packages}/linux-64/")
    _rebase(root, "noarch", f"sftp://127.0.0.1/{packages}/noarch/")
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", f"{nginx.url}/{root.name}", str(mirror))
    result = ferry("sync", str(job))
    assert result.exit_code == 1, result.output
    assert "refused info.base_url file://" in result.stderr
    assert "refused info.base_url sftp://" in result.stderr
    assert not list(mirror.glob("*/*.conda")) and not list(mirror.glob("*/*.tar.bz2"))


def test_another_host_only_when_the_job_allows_it(
    nginx: Server, split_upstream: tuple[Path, Path], tmp_path: Path
) -> None:
    root, packages = split_upstream
    for subdir in ("linux-64", "noarch"):
        _rebase(root, subdir, f"http://localhost:{nginx.port}/{packages.name}/{subdir}/")
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", f"{nginx.url}/{root.name}", str(mirror))
    refused = ferry("sync", str(job))
    assert refused.exit_code == 1
    assert "add localhost to allow_hosts" in refused.stderr
    job.write_text(job.read_text() + "allow_hosts: [localhost]\n")
    allowed = ferry("sync", str(job))
    assert allowed.exit_code == 0, allowed.stderr
    assert list(mirror.glob("linux-64/*.conda"))


def test_a_local_upstream_stays_below_its_root(tmp_path: Path) -> None:
    root = tmp_path / "up"
    build_upstream(root)
    secret = tmp_path / "secret" / "linux-64"
    secret.mkdir(parents=True)
    for path in (root / "linux-64").glob("*.conda"):
        shutil.copy(path, secret / path.name)
    _rebase(root, "linux-64", "../../secret/linux-64/")
    mirror = tmp_path / "mirror"
    result = ferry("sync", str(job_yaml(tmp_path / "job.yaml", str(root), str(mirror))))
    assert result.exit_code == 1
    assert "must lie below its own directory" in result.stderr
    assert not list(mirror.glob("linux-64/*.conda"))


WRONG_FIELDS: list[dict[str, Any]] = [
    {"size": "abc"},
    {"sha256": None, "md5": None},
    {"sha256": 12},
    {"name": 7},
    {"version": None},
    {"version": "1..x y"},
    {"depends": "python"},
    {"timestamp": "yesterday"},
    {"build_number": "0"},
]


def test_records_of_the_wrong_shape_are_refused_and_the_rest_published(
    nginx: Server, tmp_path: Path
) -> None:
    root = nginx.root / f"shapes-{tmp_path.name}"
    extra = [(Spec(f"bad{i}", "1.0", "0", subdir="linux-64"), ".conda") for i in range(9)]
    build_upstream(root, extra)

    def spoil(document: dict[str, Any]) -> None:
        section = document["packages.conda"]
        for i, wrong in enumerate(WRONG_FIELDS):
            section[f"bad{i}-1.0-0.conda"].update(wrong)
        section["../../evil-1.0-0.conda"] = dict(section["bad0-1.0-0.conda"])
        section["notarecord-1.0-0.conda"] = "a string"

    edit_repodata(root, "linux-64", spoil)
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", f"{nginx.url}/{root.name}", str(mirror))
    report = tmp_path / "report.json"
    result = ferry("sync", str(job), "--json", str(report))
    assert result.exit_code == 3, result.stderr
    published = load(mirror / "linux-64/repodata.json")["packages.conda"]
    assert not [name for name in published if name.startswith(("bad", "notarecord"))]
    assert "zlib-1.3.1-h0_0.conda" in published  # the rest went through
    failures = load(report)["subdirs"][0]["failures"]
    assert len(failures) == 11, failures
    for i in range(9):
        assert f"bad{i}-1.0-0.conda: upstream record refused" in result.stderr
    assert not (tmp_path / "evil-1.0-0.conda").exists()
    again = ferry("sync", str(job))  # named again, not stuck, nothing fetched twice
    assert again.exit_code == 3 and "bad0-1.0-0.conda" in again.stderr


class _Fixed(http.server.BaseHTTPRequestHandler):
    """Serves ``files``: path -> (body, extra headers); nothing else exists."""

    files: ClassVar[dict[str, tuple[bytes, dict[str, str]]]] = {}

    def do_GET(self) -> None:
        body, headers = self.files.get(self.path, (b"", {}))
        self.send_response(200 if self.path in self.files else 404)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fixed_server() -> Iterator[tuple[str, dict[str, tuple[bytes, dict[str, str]]]]]:
    files: dict[str, tuple[bytes, dict[str, str]]] = {}
    handler = type("Handler", (_Fixed,), {"files": files})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()
    server.server_close()


def _spaces_gzip(gib: int) -> bytes:
    """``gib`` GiB of spaces as a gzip stream of a few MB (members concatenated)."""
    member = gzip.compress(b" " * (16 << 20), 9)
    return member * (gib * 64)


def _spaces_zst(gib: int) -> bytes:
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    chunk = b" " * (1 << 20)
    return b"".join([*(compressor.compress(chunk) for _ in range(gib << 10)), compressor.flush()])


def _run_measured(args: list[str]) -> tuple[int, str, int]:
    """Exit code, stderr and peak resident bytes of one ``ferry`` run."""
    command = [sys.executable, "-m", "conda_ferry", *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss * 1024


@pytest.mark.parametrize("variant", ["gzip", "zst"])
def test_decompression_bombs_in_repodata_are_refused_early(
    fixed_server: tuple[str, dict[str, tuple[bytes, dict[str, str]]]],
    tmp_path: Path,
    variant: str,
) -> None:
    url, files = fixed_server
    for subdir in ("linux-64", "noarch"):
        if variant == "gzip":
            files[f"/{subdir}/repodata.json"] = (_spaces_gzip(2), {"Content-Encoding": "gzip"})
        else:
            files[f"/{subdir}/repodata.json.zst"] = (_spaces_zst(2), {})
    job = job_yaml(tmp_path / "job.yaml", url, str(tmp_path / "mirror"))
    code, err, peak = _run_measured(["sync", str(job)])
    assert code == 1, err
    assert "decompression bomb" in err and "repodata.json" in err
    assert "Traceback" not in err
    print(f"{variant} bomb refused at a peak of {peak >> 20} MiB resident")
    assert peak < 600 << 20, f"peak resident {peak >> 20} MiB"


def test_a_trickling_server_cannot_hold_a_transfer(nginx: Server, tmp_path: Path) -> None:
    root = nginx.root / f"trickle-{tmp_path.name}"
    (root / "noarch").mkdir(parents=True)
    (root / "noarch" / "big.bin").write_bytes(os.urandom(200_000))
    proxy = FaultProxy(nginx.port)
    proxy.default = "trickle:400"  # headers in a second; the body would take 8 minutes
    try:
        url = f"http://127.0.0.1:{proxy.port}/{root.name}/noarch/big.bin"
        result = ferry("cp", url, str(tmp_path / "out.bin"), "--timeout", "1", "--retries", "1")
    finally:
        proxy.close()
    assert result.exit_code == 1
    assert "below min_rate 1024 bytes/s" in result.stderr and "--min-rate" in result.stderr
    assert not (tmp_path / "out.bin").exists()


def test_a_package_replaced_upstream_under_the_same_name_is_an_anomaly(
    synced: tuple[Path, Path, Path],
) -> None:
    root, mirror, job = synced
    name = "zlib-1.3.1-h0_0.conda"
    before = (mirror / "linux-64" / name).read_bytes()
    record = load(mirror / "linux-64/repodata.json")["packages.conda"][name]
    rebuilt = Spec("zlib", "1.3.1", "h0_0", subdir="linux-64", files={"lib/z": b"rebuilt"})
    (root / "linux-64" / name).write_bytes(package_bytes(rebuilt))
    reindex(root)

    kept = ferry("sync", str(job))
    assert kept.exit_code == 3, kept.stderr
    assert f"linux-64/{name}: upstream now serves other bytes" in kept.stderr
    assert (mirror / "linux-64" / name).read_bytes() == before
    assert load(mirror / "linux-64/repodata.json")["packages.conda"][name] == record
    assert assert_consistent(mirror) > 0

    job.write_text(job.read_text() + "allow_replace: true\n")
    replaced = ferry("sync", str(job))
    assert replaced.exit_code == 0, replaced.stderr
    assert (mirror / "linux-64" / name).read_bytes() == package_bytes(rebuilt)
    assert assert_consistent(mirror) > 0


@pytest.mark.parametrize("own", [".", ".ferry", "/tmp/abs", "a/b", "../up"])
def test_publish_takes_only_a_real_subdir_name_from_a_package(own: str, tmp_path: Path) -> None:
    package = tmp_path / "odd-1.0-0.conda"
    package.write_bytes(package_bytes(Spec("odd", subdir=own)))
    channel = tmp_path / "channel"
    result = ferry("publish", str(package), "--to", str(channel))
    assert result.exit_code == 1
    assert "not a subdir name" in result.stderr
    assert list(tmp_path.rglob("*.conda")) == [package]  # nothing copied anywhere
    assert not Path("/tmp/abs/odd-1.0-0.conda").exists()


def test_publish_refuses_a_package_built_for_another_subdir(tmp_path: Path) -> None:
    package = write_package(tmp_path / "built", Spec("tool", subdir="linux-64"))
    result = ferry("publish", str(package), "--to", str(tmp_path / "ch"), "--subdir", "osx-64")
    assert result.exit_code == 1 and "built for linux-64, not osx-64" in result.stderr
    assert not (tmp_path / "ch" / "osx-64").exists()


@pytest.mark.parametrize(
    "record",
    [
        '{"host": "elsewhere", "pid": 1e30, "started": 0, "expires": 1}',
        '{"host": "elsewhere", "pid": 99999999999999999999, "started": 0, "expires": 1}',
        '{"host": "elsewhere", "pid": 1, "started": 0, "expires": NaN}',
        '{"host": "elsewhere", "pid": 1, "started": 0, "expires": Infinity}',
        '{"host": "elsewhere", "pid": -5, "started": 0, "expires": 1e300}',
        '["not", "a", "record"]',
    ],
)
def test_a_lock_record_that_no_ferry_wrote_ages_by_its_mtime(record: str, tmp_path: Path) -> None:
    channel = tmp_path / "ch"
    write_package(channel, Spec("tool", subdir="noarch"))
    lock = channel / "noarch" / ".ferry.lock"
    lock.write_text(record)
    fresh = ferry("index", str(channel))
    assert fresh.exit_code == 75, fresh.stderr  # unreadable and new: may be mid-write
    assert "owner record is unreadable" in fresh.stderr
    two_hours_ago = time.time() - 7200
    os.utime(lock, (two_hours_ago, two_hours_ago))
    old = ferry("index", str(channel))
    assert old.exit_code == 0, old.stderr
    assert "taking over a stale lock" in old.stderr


def test_a_content_length_that_is_no_number_is_no_crash(
    fixed_server: tuple[str, dict[str, tuple[bytes, dict[str, str]]]], tmp_path: Path
) -> None:
    url, files = fixed_server
    files["/noarch/file.bin"] = (b"hello", {"Content-Length": "abc"})
    result = ferry("cp", f"{url}/noarch/file.bin", str(tmp_path / "out.bin"), "--retries", "1")
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert result.exit_code in (0, 1)
    if result.exit_code == 0:
        assert (tmp_path / "out.bin").read_bytes() == b"hello"
    else:
        assert not (tmp_path / "out.bin").exists()


def test_a_closed_stdout_does_not_stop_the_work(tmp_path: Path) -> None:
    channel = tmp_path / "ch"
    for i in range(30):
        write_package(channel, Spec(f"tool{i}", subdir="noarch"))
    command = f"{sys.executable} -m conda_ferry ls {channel}/noarch | head -1"
    listed = subprocess.run(command, shell=True, capture_output=True, text=True)
    assert listed.stdout.count("\n") == 1 and not listed.stderr
    command = f"{sys.executable} -m conda_ferry index {channel} --json - | head -c 1"
    indexed = subprocess.run(command, shell=True, capture_output=True, text=True)
    assert not indexed.stderr.strip() or "Traceback" not in indexed.stderr
    assert (channel / "noarch" / "repodata.json").exists()


def test_a_password_in_the_source_url_is_nowhere_on_disk_or_screen(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    raw = upstream[1].replace("http://", "http://mirror:pa#ss/Leak9@")
    unquoted = ferry("-v", "sync", str(job_yaml(tmp_path / "raw.yaml", raw, str(mirror))))
    assert unquoted.exit_code == 2 and "percent-encode it" in unquoted.stderr
    assert "Leak9" not in unquoted.output + unquoted.stderr
    source = raw.replace("pa#ss/Leak9", "pa%23ss%2FLeak9")
    job = job_yaml(tmp_path / "job.yaml", source, str(mirror))
    report = tmp_path / "report.json"
    result = ferry("-v", "sync", str(job), "--json", str(report))
    assert result.exit_code == 0, result.stderr
    for path in [report, *mirror.rglob("*")]:
        if path.is_file():
            assert b"Leak9" not in path.read_bytes(), path
    assert "Leak9" not in result.output + result.stderr


def _s3_store(stored: dict[str, bytes], seen: list[tuple[bytes, str]], stale: bool) -> Any:
    """A store that answers S3's API on loopback: it keeps each body one byte short,
    or (``stale``) whole but then describes an older object, as a store that is only
    eventually consistent may."""

    def answer(conn: Any) -> None:
        while (request := _s3_request(conn)) is not None:
            method, target, _, body = request
            key = target.decode().split("?")[0]
            seen.append((method, key))
            head = b"HTTP/1.1 200 OK\r\n"
            if method == b"PUT":
                stored[key] = body if stale else body[:-1]
                head += b'ETag: "e"\r\nContent-Length: 0\r\n'
            elif method == b"HEAD" and key in stored:
                etag, size = (b'"old"', 3) if stale else (b'"e"', len(stored[key]))
                head += b"ETag: %s\r\nContent-Length: %d\r\n" % (etag, size)
                head += b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
            elif method == b"DELETE":
                stored.pop(key, None)
                head = b"HTTP/1.1 204 No Content\r\n"
            else:
                head = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
            conn.sendall(head + b"\r\n")

    return answer


@pytest.mark.parametrize("stale", [False, True], ids=["short", "stale"])
def test_an_s3_object_written_is_checked_against_the_bytes_sent(
    stale: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object a HEAD describes with the write's own ETag must be the bytes sent
    (S3 checks each body against its signed digest; a look-alike may not): short, the
    copy fails naming it and the object is deleted again. A HEAD of another ETag (an
    older object, from a store that is only eventually consistent) is no evidence
    against the write, and nothing is deleted."""
    stored: dict[str, bytes] = {}
    seen: list[tuple[bytes, str]] = []
    for name, value in (("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s3cret")):
        monkeypatch.setenv(name, value)
    source = tmp_path / "pkg.conda"
    source.write_bytes(os.urandom(5000))
    url = "s3://bucket/ch/noarch/pkg.conda"
    with _scripted_server(_s3_store(stored, seen, stale)) as port:
        endpoint = f"http://127.0.0.1:{port}"
        options = ["--endpoint-url", endpoint, "--region", "us-east-1", "--retries", "1"]
        result = ferry("cp", str(source), url, *options)
    key = "/bucket/ch/noarch/pkg.conda"
    if stale:
        assert result.exit_code == 0, result.stderr
        assert stored[key] == source.read_bytes() and (b"DELETE", key) not in seen
        return
    assert result.exit_code == 1
    said = result.stderr.strip().splitlines()
    assert len(said) == 1, result.stderr
    assert said[0].startswith(f"ferry: error: {url}: the server stored 4999 bytes of the 5000")
    assert "disk or a quota" in said[0] and "s3cret" not in result.stderr
    assert stored == {} and (b"DELETE", key) in seen


class _Room:
    """A file on a disk with ``left`` bytes of room: writes past it fail as a full
    disk's do (``short``: every write silently keeps one byte less, as a server whose
    disk filled without telling it)."""

    def __init__(self, handle: Any, left: int, short: bool) -> None:
        self._handle, self.name, self._left, self._short = handle, handle.name, left, short

    @property
    def closed(self) -> bool:
        return bool(self._handle.closed)

    def close(self) -> None:
        self._handle.close()

    def write(self, data: bytes) -> int:
        if self._short:
            return int(self._handle.write(data[:-1]))
        if len(data) > self._left:
            self._handle.write(data[: self._left])
            self._left = 0
            raise OSError(28, "No space left on device")
        self._left -= len(data)
        return int(self._handle.write(data))


@contextlib.contextmanager
def _ftp_with_room(root: Path, how: str) -> Iterator[tuple[int, list[str]]]:
    """pyftpdlib on loopback whose disk holds 3,000 bytes of an upload. Out of room it
    answers as it does itself (``426 None; transfer aborted.``), or as ProFTPD does
    (``426 Transfer aborted. No space left on device``); ``short``: it keeps less and
    says nothing. Yields its port and the commands it was sent."""
    with warnings.catch_warnings():  # it is built on asyncore, deprecated in 3.11
        warnings.simplefilter("ignore", DeprecationWarning)
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.filesystems import AbstractedFS
        from pyftpdlib.handlers import DTPHandler, FTPHandler
        from pyftpdlib.servers import FTPServer

    commands: list[str] = []

    class Disk(AbstractedFS):  # type: ignore[misc]
        def open(self, filename: str, mode: str) -> Any:
            handle = super().open(filename, mode)
            return _Room(handle, 3000, how == "short") if "w" in mode else handle

    class Data(DTPHandler):  # type: ignore[misc]
        def handle_error(self) -> None:
            if how != "words":
                return super().handle_error()  # type: ignore[no-any-return]
            self._resp = ("426 Transfer aborted. No space left on device", lambda line: None)
            self.close()

    class Control(FTPHandler):  # type: ignore[misc]
        def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
            commands.append(cmd)
            super().pre_process_command(line, cmd, arg)

    authorizer = DummyAuthorizer()
    authorizer.add_user("ferry", "Zq9#Leak1", str(root), perm="elradfmwMT")
    Control.authorizer, Control.abstracted_fs, Control.dtp_handler = authorizer, Disk, Data
    server = FTPServer(("127.0.0.1", 0), Control)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.05})
    quiet = logging.getLogger("pyftpdlib")  # its lines are not ferry's stderr
    quiet.disabled = True
    thread.start()
    try:
        yield server.socket.getsockname()[1], commands
    finally:
        server.close_all()
        thread.join(5)
        quiet.disabled = False


@pytest.mark.parametrize("how", ["bare", "words", "short"])
def test_an_ftp_server_out_of_room_fails_the_copy_in_one_line(how: str, tmp_path: Path) -> None:
    """A real FTP server whose disk fills during an upload: its answer quoted (one
    that says it is out of room is a refused write, whose hint asks about the disk,
    not "it may work on a later run"), or, where it kept less and said nothing, the
    size it reports held against the bytes sent. Nothing is left under the package's
    name or a temp name, and the password is not printed."""
    root = tmp_path / "root"
    root.mkdir()
    source = tmp_path / "pkg.conda"
    source.write_bytes(os.urandom(5000))
    with _ftp_with_room(root, how) as (port, commands):
        url = f"ftp://ferry:Zq9%23Leak1@127.0.0.1:{port}/ch/noarch/pkg.conda"
        result = ferry("cp", str(source), url)
    assert result.exit_code == 1
    said = result.stderr.strip().splitlines()
    assert len(said) == 1, result.stderr
    shown = f"ftp://ferry:***@127.0.0.1:{port}/ch/noarch/pkg.conda"
    assert said[0].startswith(f"ferry: error: {shown}: ")
    assert "Leak1" not in result.stderr
    expected = {
        "bare": "the server answered FTP 426 None; transfer aborted.",
        "words": "the server refused a write: FTP 426 Transfer aborted. No space left on device",
        "short": "the server stored 4999 bytes of the 5000 sent",
    }[how]
    assert expected in said[0]
    assert commands.count("STOR") == 1 and "DELE" in commands  # the temp deleted again
    assert list((root / "ch" / "noarch").iterdir()) == []
