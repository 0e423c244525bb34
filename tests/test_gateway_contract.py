"""One behaviour contract, proved by every adapter against its real server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conda_ferry.gateways import (
    GatewayError,
    GatewayOptions,
    IntegrityError,
    LockHeld,
    LockInfo,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ReadOnlyError,
    UsageError,
    VerifyingReader,
    is_temp,
    open_gateway,
)
from conda_ferry.gateways.localfs import LocalGateway
from conda_ferry.gateways.s3 import S3Gateway
from conda_ferry.gateways.streams import bytes_problem
from tests.conftest import FAST_RETRY, Area, make_area
from tests.servers import Server, access_log

BLOB = os.urandom(3 * 1024 * 1024 + 17)


def test_list_one_level_and_recursive(area: Area) -> None:
    area.seed("a/b.txt", b"bb")
    area.seed("a/c/d.txt", b"ddd")
    area.seed("e.txt", b"e")
    with area.gateway() as gw:
        top = {(f.path, f.is_dir) for f in gw.list("")}
        assert top == {("a", True), ("e.txt", False)}
        files = gw.list("", recursive=True)
        assert [f.path for f in files] == ["a/b.txt", "a/c/d.txt", "e.txt"]
        if area.kind != "http":  # autoindex pages carry no reliable sizes
            assert [f.size for f in files] == [2, 3, 1]
        assert [f.path for f in gw.list("a")] == ["a/b.txt", "a/c"]
        # the files' names only, as a commit looks at its shards and pages
        assert gw.names("a") == ["b.txt"] and gw.names("") == ["e.txt"]
        assert gw.names("no-such-dir") == []


def test_info_exists_and_not_found(area: Area) -> None:
    area.seed("x/file.bin", BLOB)
    with area.gateway() as gw:
        info = gw.info("x/file.bin")
        assert (info.path, info.size) == ("x/file.bin", len(BLOB))
        assert info.mtime and abs(info.mtime - time.time()) < 3600
        assert gw.exists("x/file.bin")
        assert not gw.exists("x/missing.bin")
        with pytest.raises(NotFound) as caught:
            gw.info("x/missing.bin")
        assert "missing.bin" in str(caught.value)


def test_streamed_read_from_offset(area: Area) -> None:
    area.seed("blob", BLOB)
    with area.gateway() as gw:
        with gw.open_read("blob") as stream:
            assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(BLOB).digest()
        with gw.open_read("blob", offset=1_000_001) as stream:
            first = stream.read(10)
            rest = b"".join(iter(lambda: stream.read(65536), b""))
        assert first + rest == BLOB[1_000_001:]


def test_conditional_fetch(area: Area) -> None:
    area.seed("repodata.json", b'{"packages": {}}')
    with area.gateway() as gw:
        fetched = gw.fetch_if_changed("repodata.json")
        assert fetched is not None
        with fetched:
            assert fetched.stream.read() == b'{"packages": {}}'
        etag, modified = fetched.info.etag, fetched.last_modified
        assert etag
        assert gw.fetch_if_changed("repodata.json", etag, modified) is None
        time.sleep(1.1)  # second-resolution mtimes and Last-Modified
        area.seed("repodata.json", b'{"packages": {"a": 1}}')
        again = gw.fetch_if_changed("repodata.json", etag, modified)
        assert again is not None
        with again:
            assert again.stream.read() == b'{"packages": {"a": 1}}'


def test_http_takes_text_beyond_ascii_wherever_a_user_or_server_gives_it(
    nginx: Server, tmp_path: Path
) -> None:
    """A channel path with a space and accents, a user name and password beyond
    ASCII, a CA bundle at such a path, an ETag a server sent in Latin-1: each goes to
    the server as it should (found by the commands fuzzer: each was an internal
    error, libcurl taking only ASCII)."""
    root = nginx.root / "kanal é"
    root.mkdir()
    (root / "dätä.json").write_bytes(b'{"a": 1}')
    ca = tmp_path / "cà é.crt"
    ca.write_bytes(Path(nginx.extra["ca"]).read_bytes())
    for base in (nginx.url, nginx.extra["https"]):
        url = base.replace("://", "://üser:pässwörd@") + "/kanal é"
        with open_gateway(url, GatewayOptions(**FAST_RETRY, ca_bundle=str(ca))) as gw:
            assert [f.name for f in gw.list("")] == ["dätä.json"]
            assert gw.read_bytes("dätä.json") == b'{"a": 1}'
            fetched = gw.fetch_if_changed("dätä.json", etag='"\xe9t\xe9"')
            assert fetched is not None and fetched.stream.read() == b'{"a": 1}'
    # bytes a command line could not decode are sent as they came
    with (
        open_gateway(f"{nginx.url}/x\udcff", GatewayOptions(**FAST_RETRY)) as gw,
        pytest.raises(NotFound),
    ):
        gw.read_bytes("a\udcff.json")
    log = access_log(nginx)
    asked = [line for line in log if "/kanal%20%C3%A9/d%C3%A4t%C3%A4.json" in line]
    assert len(asked) == 4, asked  # read and fetched, over HTTP and HTTPS
    assert all(line.split()[2] == "\\xC3\\xBCser" for line in asked), asked  # UTF-8
    assert any("GET /x%FF/a%FF.json " in line for line in log)


def test_http_gzip_json_is_decoded_and_compressed_files_stay(nginx: Server) -> None:
    root = nginx.root / "gz"
    root.mkdir()
    document = json.dumps({"packages": {f"p{i}": i for i in range(500)}}).encode()
    frame = b"\x28\xb5\x2f\xfd" + document[:100]
    (root / "repodata.json").write_bytes(document)
    (root / "repodata.json.zst").write_bytes(frame)
    with open_gateway(f"{nginx.url}/gz") as gw:
        assert gw.read_bytes("repodata.json") == document
        assert gw.read_bytes("repodata.json.zst") == frame
    sent = {}
    for line in access_log(nginx):
        fields = line.split('"')
        request, status_size = fields[1], fields[2].split()
        sent[request.split()[1]] = int(status_size[1])
    assert sent["/gz/repodata.json"] < len(document) / 2  # it travelled gzip-encoded
    assert sent["/gz/repodata.json.zst"] == len(frame)


def test_write_atomic_replaces_and_cleans_up(writable: Area) -> None:
    with writable.gateway() as gw:
        gw.write_bytes("sub/dir/file.bin", b"old")
        assert writable.peek("sub/dir/file.bin") == b"old"
        info = gw.write_atomic("sub/dir/file.bin", io.BytesIO(BLOB))
        assert info.size == len(BLOB)
        assert writable.peek("sub/dir/file.bin") == BLOB
        assert [f.path for f in gw.list("sub/dir")] == ["sub/dir/file.bin"]


class SlowStream(io.RawIOBase):
    def __init__(self, data: bytes, pieces: int = 12, pause: float = 0.04) -> None:
        self.data, self.size, self.pause = data, max(1, len(data) // pieces), pause
        self.at = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        time.sleep(self.pause)
        chunk = self.data[self.at : self.at + min(self.size, n if n > 0 else self.size)]
        self.at += len(chunk)
        return chunk


def test_reader_during_write_sees_old_or_new(writable: Area) -> None:
    old, new = b"o" * 200_000, b"n" * (20 * 1024 * 1024)
    with writable.gateway() as gw:
        gw.write_bytes("f.bin", old)
        seen: set[int] = set()
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                data = writable.peek("f.bin")
                assert data in (old, new), f"partial file of {len(data or b'')} bytes seen"
                seen.add(len(data or b""))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            gw.write_atomic("f.bin", SlowStream(new))  # type: ignore[arg-type]
        finally:
            done.set()
            watcher.join()
        assert writable.peek("f.bin") == new
        assert len(old) in seen


def test_failed_write_keeps_old_file(writable: Area) -> None:
    with writable.gateway() as gw:
        gw.write_bytes("pkg.conda", b"old")
        bad = VerifyingReader(io.BytesIO(BLOB), "src", len(BLOB), sha256="00" * 32)
        with pytest.raises(IntegrityError):
            gw.write_atomic("pkg.conda", bad.as_binary())
        assert writable.peek("pkg.conda") == b"old"
        assert [f.path for f in gw.list("")] == ["pkg.conda"]


_DATA = b"conda" * 1000
_SHA256, _MD5 = hashlib.sha256(_DATA).hexdigest(), hashlib.md5(_DATA).hexdigest()


@pytest.mark.parametrize(
    "size, sha256, md5",
    [
        (len(_DATA), _SHA256, _MD5),
        (len(_DATA), _SHA256.upper(), None),
        (len(_DATA) + 1, _SHA256, None),
        (len(_DATA), "00" * 32, _MD5),
        (None, None, _MD5),
        (None, None, "00" * 16),
        (len(_DATA), _SHA256, "00" * 16),  # md5 beside a matching sha256: not looked at
        (None, None, None),
    ],
)
def test_whole_bytes_are_checked_as_a_stream_is(
    size: int | None, sha256: str | None, md5: str | None
) -> None:
    """A small package fetched ahead is checked whole (``bytes_problem``), a large
    one as it streams (``VerifyingReader``): the two must find the same problems."""
    problem, digest = bytes_problem(_DATA, size, sha256, md5)
    assert digest == _SHA256
    reader = VerifyingReader(io.BytesIO(_DATA), "src", size, sha256, md5)
    try:
        while reader.read(1000):
            pass
    except IntegrityError as exc:
        assert problem == exc.message
    else:
        assert problem is None


def test_delete(writable: Area) -> None:
    with writable.gateway() as gw:
        gw.write_bytes("moved/c.txt", b"A")
        assert writable.peek("moved/c.txt") == b"A"
        gw.delete("moved/c.txt")
        assert not gw.exists("moved/c.txt")
        gw.delete("moved/c.txt")  # deleting what is gone is fine


def test_a_staging_directory_appears_whole_at_its_path(writable: Area) -> None:
    """Files written unseen in a staging directory are named nowhere until it is
    renamed to its path, all at once; what a killed run staged goes with the next
    staging. A store that cannot rename a directory has none (its writer writes each
    file whole at its path)."""
    with writable.gateway() as gw:
        staging = gw.staging_directory("sub/shards")
        if staging is None:
            assert not isinstance(gw, LocalGateway)
            return
        assert is_temp(staging.rpartition("/")[2]) and staging.startswith("sub/.shards.")
        files = [(f"{staging}/{i}.zst", bytes([i]) * 10) for i in range(70)]
        assert gw.write_many(iter(files), unseen=True) == [path for path, _ in files]
        gw.flush()
        assert gw.names("sub/shards") == []
        gw.publish_directory(staging, "sub/shards")
        assert gw.names("sub/shards") == sorted(f"{i}.zst" for i in range(70))
        assert gw.read_bytes("sub/shards/3.zst") == bytes([3]) * 10
        left = gw.staging_directory("sub/pages")  # a run killed before its rename
        assert left is not None
        gw.write_many([(f"{left}/a.html", b"half")], unseen=True)
        again = gw.staging_directory("sub/pages")
        assert again is not None and again != left
        assert [f.path for f in gw.list("sub") if f.is_dir] == [again, "sub/shards"]
        gw.publish_directory(again, "sub/pages")  # a new, empty directory
        assert gw.names("sub/pages") == []
        assert gw.staging_directory("sub/shards") is None  # not empty: written in place
        gw.write_bytes("sub/file", b"")
        assert gw.staging_directory("sub/file") is None


def test_lock_excludes_a_second_holder(writable: Area) -> None:
    with writable.gateway() as first, writable.gateway() as second:
        with first.lock("linux-64/.ferry.lock") as held:
            assert held.pid == os.getpid()
            with pytest.raises(LockHeld) as caught, second.lock("linux-64/.ferry.lock"):
                pass
            assert "held by pid" in str(caught.value)
        with second.lock("linux-64/.ferry.lock"):
            pass


def test_stale_lock_is_taken_over(writable: Area, caplog: pytest.LogCaptureFixture) -> None:
    dead = {
        "host": socket.gethostname(),
        "pid": 2**22 + 12345,
        "started": time.time(),
        "expires": time.time() + 3600,
    }
    expired = {"host": "elsewhere", "pid": 1, "started": 0, "expires": 1}
    with writable.gateway() as gw:
        for record in (dead, expired):
            if writable.kind == "ftp":
                gw._create_exclusive(".lock", json.dumps(record).encode())
            else:
                writable.seed(".lock", json.dumps(record).encode())
            with gw.lock(".lock"):
                pass
        assert "stale lock" in caplog.text


def test_a_held_lock_beats_and_a_live_holder_here_is_never_taken_over(writable: Area) -> None:
    with writable.gateway() as gw:
        with gw.lock(".lock", ttl=0.4) as held:
            deadline = time.monotonic() + 10  # a heartbeat every ttl/4: the record moves on
            while True:
                time.sleep(0.1)
                renewed = LockInfo.from_bytes(gw.read_lock(".lock"))
                assert renewed is not None
                if renewed.expires > held.expires or time.monotonic() > deadline:
                    break
            assert renewed.expires > held.expires
        alive = subprocess.Popen(["sleep", "30"])
        try:
            record = {"host": socket.gethostname(), "pid": alive.pid, "started": 0, "expires": 1}
            if writable.kind == "ftp":
                gw._create_exclusive(".lock", json.dumps(record).encode())
            else:
                writable.seed(".lock", json.dumps(record).encode())
            with pytest.raises(LockHeld), gw.lock(".lock"):  # expired, but its holder lives
                pass
        finally:
            alive.kill()
            alive.wait()
        with gw.lock(".lock"):  # now it is gone
            pass


def test_a_lock_killed_before_its_owner_record_ages_out(
    writable: Area, caplog: pytest.LogCaptureFixture
) -> None:
    """A run killed between creating the lock and writing its owner (on FTP: between
    MKD and STOR of the owner file) leaves an unreadable lock: obeyed while young,
    taken over when old, never obeyed forever."""
    if writable.disk is None:
        pytest.skip("S3 objects cannot be back-dated")
    lock = writable.disk / "linux-64" / ".ferry.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    if writable.kind == "ftp":
        lock.mkdir()  # the lock directory, its owner file never written
    else:
        lock.write_bytes(b"")
    with writable.gateway() as gw:
        with pytest.raises(LockHeld) as caught, gw.lock("linux-64/.ferry.lock"):
            pass
        assert "unreadable" in str(caught.value)
        two_hours_ago = time.time() - 7200
        os.utime(lock, (two_hours_ago, two_hours_ago))
        with gw.lock("linux-64/.ferry.lock") as held:
            assert held.pid == os.getpid()
        assert "stale lock" in caplog.text
        assert not lock.exists()


def test_http_read_hands_over_what_is_held_at_once(nginx: Server) -> None:
    """libcurl delivers a body 16 kB at a time; a read takes the pieces held, up to
    64 kB, so the layers above (hash, write) are not called per 16 kB."""
    data = os.urandom(8 << 20)
    (nginx.root / "large.bin").write_bytes(data)
    sizes = []
    with open_gateway(nginx.url) as gw, gw.open_read("large.bin") as stream:
        while chunk := stream.read(1 << 20):
            assert len(chunk) <= 64 << 10
            sizes.append(len(chunk))
    assert sum(sizes) == len(data)
    assert max(sizes) > 16 << 10
    assert len(sizes) < len(data) // (16 << 10)


def test_http_listing_links_that_are_no_file_names_are_not_listed(nginx: Server) -> None:
    """A listing page is any HTML the server sends: only names of the directory's own
    entries are listed, never a path out of it or into another."""
    page = nginx.root / "links" / "index.html"  # served for links/ as its listing
    page.parent.mkdir()
    hrefs = ["../up/", "a/b.conda", "%2e%2e/x.conda", "/abs.conda", "http://x/y.conda"]
    hrefs += ["#top", "?C=N;O=D", "./", "sub/", "x.conda", "sub//"]
    page.write_text("".join(f'<a href="{h}">{h}</a>\n' for h in hrefs))
    with open_gateway(nginx.url) as gw:
        listed = [(f.path, f.is_dir) for f in gw.list("links")]
    assert listed == [("links/sub", True), ("links/x.conda", False)]


def test_http_is_read_only(nginx: Server) -> None:
    with open_gateway(nginx.url) as gw:
        with pytest.raises(ReadOnlyError):
            gw.write_bytes("x", b"x")
        with pytest.raises(ReadOnlyError):
            gw.delete("x")


def test_https_trusts_only_what_it_is_told_to(nginx: Server) -> None:
    """A certificate no CA bundle vouches for is refused in one line that names the
    option; naming its CA, or turning verification off, reaches the file."""
    (nginx.root / "tls.json").write_bytes(b'{"over": "tls"}')
    url = nginx.extra["https"]
    with (
        open_gateway(url, GatewayOptions(**FAST_RETRY)) as gw,
        pytest.raises(ProtocolError, match=r"TLS verification failed.*CA bundle"),
    ):
        gw.read_bytes("tls.json")
    trusted = GatewayOptions(**FAST_RETRY, ca_bundle=nginx.extra["ca"])
    with open_gateway(url, trusted) as gw:
        assert gw.read_bytes("tls.json") == b'{"over": "tls"}'
        fetched = gw.fetch_if_changed("tls.json")
        assert fetched is not None and fetched.stream.read() == b'{"over": "tls"}'
    with open_gateway(url, GatewayOptions(**FAST_RETRY, verify_tls=False)) as gw:
        assert gw.read_bytes("tls.json") == b'{"over": "tls"}'


def test_paths_cannot_escape_the_root(area: Area) -> None:
    with area.gateway() as gw:
        for bad in ("../x.conda", "a/../../x", "..\\x"):
            with pytest.raises(UsageError):
                gw.info(bad)


def test_bad_credentials_are_named_without_secrets(
    ftpd: Server, sshd: Server, moto: Server, tmp_path: Path
) -> None:
    url = ftpd.url.replace("s3cret-ftp", "wrong-password")
    with pytest.raises(PermissionDenied) as caught:
        open_gateway(url, GatewayOptions(**FAST_RETRY)).list("")
    assert "wrong-password" not in str(caught.value) and "127.0.0.1" in str(caught.value)

    other_key = tmp_path / "other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
    )
    options = GatewayOptions(
        **FAST_RETRY, key_file=str(other_key), known_hosts=sshd.extra["known_hosts"]
    )
    with pytest.raises(PermissionDenied):
        open_gateway(sshd.url, options).list("")

    missing = GatewayOptions(**FAST_RETRY, endpoint_url=moto.url)
    with pytest.raises(NotFound) as gone:
        open_gateway("s3://no-such-bucket/x", missing).list("")
    assert "no-such-bucket" in str(gone.value)


def test_unknown_host_key_is_refused(sshd: Server, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = GatewayOptions(**FAST_RETRY, key_file=sshd.extra["key_file"], known_hosts=str(empty))
    with pytest.raises(ProtocolError) as caught:
        open_gateway(sshd.url, options).list("")
    assert "known_hosts" in str(caught.value)


def test_s3_unfinished_uploads_of_a_killed_run_are_aborted(moto: Server) -> None:
    import boto3

    options = GatewayOptions(**FAST_RETRY, endpoint_url=moto.url)
    client = boto3.client("s3", endpoint_url=moto.url)
    client.create_multipart_upload(Bucket="ferry", Key="killed/linux-64/big.conda")
    with open_gateway("s3://ferry/killed", options) as gw:
        assert gw.abort_incomplete("elsewhere") == 0
        # (moto reports every upload as initiated in 2010, so age is not tested here)
        assert gw.abort_incomplete("linux-64") == 1
    uploads = client.list_multipart_uploads(Bucket="ferry", Prefix="killed/")
    assert not uploads.get("Uploads")


def test_s3_keys_that_are_no_file_names_are_not_listed(moto: Server) -> None:
    """A bucket may hold keys no file system could: '..', an empty level, a folder
    marker. None of them may reach a writer as a file of the subdir."""
    import boto3

    options = GatewayOptions(**FAST_RETRY, endpoint_url=moto.url)
    client = boto3.client("s3", endpoint_url=moto.url)
    for key in (
        "odd/linux-64/",
        "odd/linux-64//x.conda",
        "odd/linux-64/../y.conda",
        "odd/linux-64/ok",
    ):
        client.put_object(Bucket="ferry", Key=key, Body=b"x")
    with open_gateway("s3://ferry/odd", options) as gw:
        assert [f.path for f in gw.files("linux-64")] == ["linux-64/ok"]
        assert [f.path for f in gw.list("", recursive=True)] == ["linux-64/ok"]


def test_an_sftp_lock_stopped_while_written_is_no_lock(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped as its record is written (a kill), a run leaves no lock that the next
    run would take for a live holder's: it wrote the record under a temp name."""
    import paramiko

    area = make_area("sftp", request, tmp_path)

    def killed(self: Any, data: Any) -> None:
        raise KeyboardInterrupt

    with open_gateway(area.url, area.options) as gw:
        with monkeypatch.context() as patch:
            patch.setattr(paramiko.SFTPFile, "write", killed)
            with pytest.raises(KeyboardInterrupt), gw.lock("d/.ferry.lock"):
                pass
        assert not gw.exists("d/.ferry.lock")
        with gw.lock("d/.ferry.lock"):
            pass


def test_a_lock_appears_with_its_whole_record_and_nothing_beside_it(writable: Area) -> None:
    """A lock created empty and then written, killed between the two, held its
    subdir for five minutes (no run can read whose it is): the record comes with
    the lock, and the way it came (a temp file, over SFTP) is gone."""
    with open_gateway(writable.url, writable.options) as gw, gw.lock("d/.ferry.lock") as mine:
        held = LockInfo.from_bytes(gw.read_lock("d/.ferry.lock"))
        assert held is not None and (held.pid, held.started) == (mine.pid, mine.started)
        if writable.disk is not None:  # what the server's disk holds
            assert not [p for p in writable.disk.rglob("*") if is_temp(p.name)]
        with pytest.raises(LockHeld), gw.lock("d/.ferry.lock"):
            pass


def test_a_path_that_is_no_text_is_its_byte_on_disk_and_a_usage_error_elsewhere(
    writable: Area,
) -> None:
    """Bytes a command line did not decode (\\udcff for 0xff): a local file system
    takes them as those bytes. S3, FTP and SFTP send paths as UTF-8 text, so each
    refuses them in one usage error, before sending anything, not as the server's
    fault; and the gateway goes on working."""
    with open_gateway(writable.url, writable.options) as gw:
        if writable.kind == "localfs":
            gw.write_bytes("a\udcff.json", b"{}")
            assert [f.name for f in gw.files("")] == ["a\udcff.json"]
            assert gw.read_bytes("a\udcff.json") == b"{}"
            return
        attempts = [
            lambda: gw.read_bytes("a\udcff.json"),
            lambda: gw.write_bytes("a\udcff.json", b"{}"),
            lambda: gw.files("d\udcff"),
        ]
        for attempt in attempts:
            with pytest.raises(UsageError, match="UTF-8 text"):
                attempt()
        gw.write_bytes("ok.json", b"{}")
        assert gw.read_bytes("ok.json") == b"{}"


def test_s3_keys_take_text_beyond_ascii_and_refuse_undecoded_bytes(moto: Server) -> None:
    """An accented key is stored and read as UTF-8; bytes a command line did not
    decode can be no S3 key: one usage error naming the path, not a server's fault."""
    options = GatewayOptions(**FAST_RETRY, endpoint_url=moto.url)
    with open_gateway("s3://ferry/kanal é", options) as gw:
        gw.write_bytes("dätä.json", b"{}")
        assert gw.read_bytes("dätä.json") == b"{}"
        with pytest.raises(UsageError, match="must be UTF-8"):
            gw.read_bytes("a\udcff.json")


def test_s3_parallel_multipart_is_whole_or_nothing(moto: Server) -> None:
    import boto3

    big = os.urandom(70 * 1024 * 1024)  # five parts, several in flight
    options = GatewayOptions(**FAST_RETRY, endpoint_url=moto.url)
    client = boto3.client("s3", endpoint_url=moto.url)
    with open_gateway("s3://ferry/parts", options) as gw:
        good = VerifyingReader(io.BytesIO(big), "src", len(big), hashlib.sha256(big).hexdigest())
        gw.write_atomic("big.conda", good.as_binary())
        body = client.get_object(Bucket="ferry", Key="parts/big.conda")["Body"].read()
        assert body == big  # the parts in their order
        bad = VerifyingReader(io.BytesIO(big[::-1]), "src", len(big), "00" * 32)
        with pytest.raises(IntegrityError):
            gw.write_atomic("big.conda", bad.as_binary())
        assert client.get_object(Bucket="ferry", Key="parts/big.conda")["Body"].read() == big
    assert not client.list_multipart_uploads(Bucket="ferry", Prefix="parts/").get("Uploads")


@pytest.mark.parametrize("calculation", ["when_supported", "when_required"])
def test_s3_multipart_declares_the_checksum_its_parts_carry(
    moto: Server, calculation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As boto3's own transfers: the upload declares CRC32 and the completion names
    each part's (S3 refuses a part whose checksum the upload did not declare); where
    botocore is told to send checksums only where required, none is declared."""
    import boto3

    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", calculation)
    data = os.urandom(20 * 1024 * 1024)  # two parts
    options = GatewayOptions(**FAST_RETRY, endpoint_url=moto.url)
    completed: list[dict[str, Any]] = []
    with open_gateway("s3://ferry/sums", options) as gw:
        assert isinstance(gw, S3Gateway)
        gw.client.meta.events.register(
            "before-parameter-build.s3.CompleteMultipartUpload",
            lambda params, **_: completed.append(params),
        )
        gw.write_atomic("big.conda", io.BytesIO(data))
    (parts,) = [c["MultipartUpload"]["Parts"] for c in completed]
    assert len(parts) == 2  # moto does not ask for them: real S3 does
    assert all(("ChecksumCRC32" in p) == (calculation == "when_supported") for p in parts)
    client = boto3.client("s3", endpoint_url=moto.url)
    head = client.head_object(Bucket="ferry", Key="sums/big.conda", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert ("ChecksumCRC32" in head) == (calculation == "when_supported")
    assert client.get_object(Bucket="ferry", Key="sums/big.conda")["Body"].read() == data


def test_local_flush_waits_for_this_runs_files_only_when_they_are_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few files are made durable one by one (a sync would also wait for every
    other process's writes); thousands take one sync, of the target's file system
    alone where the system has syncfs(2)."""
    from conda_ferry.gateways import localfs

    fsynced: list[str] = []
    syncs: list[int] = []
    monkeypatch.setattr(localfs, "_fsync_file", fsynced.append)
    monkeypatch.setattr(localfs, "_sync_file_system", lambda path: syncs.append(1))
    with open_gateway(str(tmp_path)) as gateway:
        gateway.write_bytes("a/durable.bin", b"x")  # durable already: not flushed again
        gateway.write_many([(f"a/{i}.bin", b"x") for i in range(3)])
        gateway.flush()
        assert sorted(fsynced) == sorted(str(tmp_path / f"a/{i}.bin") for i in range(3))
        assert not syncs
        gateway.flush()  # nothing new
        assert len(fsynced) == 3 and not syncs
        gateway.write_many([(f"b/{i}.bin", b"x") for i in range(localfs.FSYNC_AT_MOST + 1)])
        gateway.flush()
        assert len(fsynced) == 3 and syncs == [1]


def test_local_sync_is_of_the_target_file_system_where_it_can_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conda_ferry.gateways import localfs

    everything: list[int] = []
    monkeypatch.setattr(localfs.os, "sync", lambda: everything.append(1))
    localfs._sync_file_system(str(tmp_path))
    assert everything == ([] if localfs._syncfs() is not None else [1])
    localfs._sync_file_system(str(tmp_path / "gone"))  # unopenable: all of them
    assert everything[-1:] == [1]


def test_local_large_files_start_for_the_disk_as_they_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file is fsynced in the background once written, not at the flush; the
    flush waits for it and makes its directory durable."""
    from conda_ferry.gateways import localfs

    started = threading.Event()
    fsynced: list[str] = []
    dirs: list[str] = []

    def fsync(path: str) -> None:
        started.wait(10)
        fsynced.append(path)

    monkeypatch.setattr(localfs, "EARLY_FSYNC", 100)
    monkeypatch.setattr(localfs, "_fsync_file", fsync)
    monkeypatch.setattr(localfs, "_fsync_dir", dirs.append)
    with open_gateway(str(tmp_path)) as gateway:
        gateway.write_bytes("big/a.conda", b"x" * 100, durable=False)
        gateway.write_bytes("small/b.conda", b"x", durable=False)
        assert fsynced == []  # under way, not waited for
        started.set()
        gateway.flush()
        assert sorted(fsynced) == [str(tmp_path / "big/a.conda"), str(tmp_path / "small/b.conda")]
        assert sorted(dirs) == [str(tmp_path / "big"), str(tmp_path / "small")]


def test_local_lock_appears_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed while it fills a new lock leaves no lock (an empty one would
    hold off every run for minutes; found by the kill suite)."""
    from conda_ferry.gateways import localfs

    def killed(fd: int, data: bytes) -> None:
        raise KeyboardInterrupt

    with open_gateway(str(tmp_path)) as gateway:
        monkeypatch.setattr(localfs, "_write_all", killed)
        with pytest.raises(KeyboardInterrupt), gateway.lock(".ferry/locks/x.lock"):
            pass
        assert not (tmp_path / ".ferry/locks/x.lock").exists()
        monkeypatch.undo()
        with gateway.lock(".ferry/locks/x.lock"):
            assert (tmp_path / ".ferry/locks/x.lock").stat().st_size > 0


@pytest.mark.parametrize("unnamed", [True, False])
def test_local_writes_unnamed_files_or_temps(tmp_path: Path, unnamed: bool) -> None:
    """New files are written unnamed and linked into place (Linux), or as temps
    where the file system cannot; either way a write replaces a file whole, and an
    interrupted one leaves neither a file nor a temp."""

    def chunks() -> Iterator[bytes]:
        yield b"half"
        raise KeyboardInterrupt

    with open_gateway(str(tmp_path)) as gateway:
        assert isinstance(gateway, LocalGateway)
        gateway._unnamed = gateway._unnamed and unnamed
        for content in (b"one", b"two, longer"):  # a new file, then over it
            info = gateway.write_bytes("d/f.conda", content)
            assert (tmp_path / "d/f.conda").read_bytes() == content
            assert info.size == len(content)
            assert (tmp_path / "d/f.conda").stat().st_mode & 0o777 == 0o644
        for name in ("d/f.conda", "d/g.conda"):  # over a file, and a new one
            with pytest.raises(KeyboardInterrupt):
                gateway._write(name, chunks(), durable=False)
        assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["f.conda"]
        assert (tmp_path / "d/f.conda").read_bytes() == b"two, longer"


def test_local_free_space_is_what_the_standard_library_says(tmp_path: Path) -> None:
    import shutil

    from conda_ferry.gateways import localfs

    with open_gateway(str(tmp_path)) as gateway:
        free = gateway.free_space("not/made/yet")  # its nearest ancestor's
    assert free is not None
    assert abs(free - shutil.disk_usage(tmp_path).free) < 64 << 20  # others write too
    assert localfs._free_bytes(str(tmp_path)) > 0


@pytest.mark.parametrize("unnamed", [True, False])
def test_local_write_many_replaces_files_whole(
    tmp_path: Path, unnamed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many files, each directory opened once: new directories made, files replaced
    whole, servable under any umask, no temp left, no descriptor left open, and a
    failure names its file."""
    from conda_ferry.gateways import localfs

    monkeypatch.setattr(localfs, "_UMASK_KEEPS_644", False)
    old_umask = os.umask(0o077)
    fds = len(os.listdir("/proc/self/fd"))
    try:
        with open_gateway(str(tmp_path)) as gateway:
            assert isinstance(gateway, LocalGateway)
            gateway._unnamed = gateway._unnamed and unnamed
            for content in (b"one", b"two, longer"):
                # more than one run of files taken before any is written
                files = [(f"d{i % 2}/s/{i}.zst", content + bytes([i])) for i in range(150)]
                assert gateway.write_many(iter(files)) == [path for path, _ in files]
                for path, data in files:
                    assert (tmp_path / path).read_bytes() == data
                    assert (tmp_path / path).stat().st_mode & 0o777 == 0o644
            assert sorted(p.name for p in (tmp_path / "d0/s").iterdir()) == sorted(
                f"{i}.zst" for i in range(0, 150, 2)
            )
            (tmp_path / "file").write_bytes(b"")
            with pytest.raises(GatewayError, match=r"file/x\.zst"):
                gateway.write_many([("d0/s/ok.zst", b"x"), ("file/x.zst", b"y")])
            assert (tmp_path / "d0/s/ok.zst").read_bytes() == b"x"
    finally:
        os.umask(old_umask)
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("openssh", [True, False])
def test_sftp_over_either_ssh(sshd: Server, openssh: bool) -> None:
    """The system's ssh where it is installed (the contract suite runs over it), and
    paramiko's own SSH where the user asks for it or the URL holds a password."""
    from conda_ferry.gateways import sftp

    options = GatewayOptions(
        **FAST_RETRY,
        key_file=sshd.extra["key_file"],
        known_hosts=sshd.extra["known_hosts"],
        openssh=openssh,
    )
    data = os.urandom(3 << 20)
    with open_gateway(f"{sshd.url}/either-{openssh}", options) as gw:
        gw.write_bytes("a/pkg.conda", data)
        assert gw.read_bytes("a/pkg.conda") == data
        assert [f.name for f in gw.list("a")] == ["pkg.conda"]
        with gw.lock("a/.lock"):
            assert gw.exists("a/.lock")
        engine = sftp._OpenSSH if openssh else sftp._Paramiko
        assert isinstance(gw._client, engine)  # type: ignore[attr-defined]
