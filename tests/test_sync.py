"""ferry sync end to end against real servers, with real clients reading the mirror."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import rattler
import requests

from conda_ferry.gateways import GatewayError, open_gateway
from conda_ferry.index.channel import channeldata_json
from conda_ferry.mirror import sync, transfer, upstream
from conda_ferry.mirror.copying import GONE_UPSTREAM
from conda_ferry.mirror.errors import FerryError
from conda_ferry.mirror.state import SubdirState
from tests.clientread import read_msgpack_zst
from tests.faultproxy import FaultProxy
from tests.helpers import ferry, load
from tests.mirrorcheck import assert_consistent
from tests.pkgmaker import Spec, write_package
from tests.servers import Server, access_log
from tests.upstream import build_upstream, edit_repodata, job_yaml, reindex

FILTERS = """filters:
  include: ["pngtool >=2"]
  exclude: ["*-dbg"]
  dependencies: true
  licenses: {deny: ["GPL-*"]}
prune: true
"""
EXPECTED = {
    "linux-64": ["libpng-1.6.43-h1_0.conda", "pngtool-2.0-h2_0.conda", "zlib-1.3.1-h0_0.conda"],
    "noarch": ["demo-data-2024.1-0.conda"],
}


def files(mirror: Path) -> dict[str, list[str]]:
    out = {}
    for subdir in ("linux-64", "noarch"):
        out[subdir] = sorted(p.name for p in (mirror / subdir).glob("*.conda")) + sorted(
            p.name for p in (mirror / subdir).glob("*.tar.bz2")
        )
    return out


def requests_since(server: Server, start: int) -> list[str]:
    return access_log(server)[start:]


def log_length(server: Server) -> int:
    return len(access_log(server))


def test_http_to_localfs_then_clients_install(
    nginx: Server, upstream: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = upstream
    mirror = nginx.root / f"mirror-{tmp_path.name}"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror), FILTERS)
    result = ferry("sync", str(job), "--json", str(tmp_path / "report.json"))
    assert result.exit_code == 0, result.output
    assert files(mirror) == EXPECTED
    assert assert_consistent(mirror) == 4
    report = load(tmp_path / "report.json")
    assert report["totals"]["added"] == 4 and report["exit_code"] == 0
    upstream_doc = load(root / "linux-64/repodata.json")
    mirrored = load(mirror / "linux-64/repodata.json")
    for filename, record in mirrored["packages.conda"].items():
        assert record == upstream_doc["packages.conda"][filename]  # verbatim

    # a real client solves and installs from the mirror, served over HTTP
    records = asyncio.run(
        rattler.solve(
            sources=[rattler.Channel(f"{nginx.url}/{mirror.name}")],
            specs=["pngtool"],
            platforms=["linux-64", "noarch"],
            virtual_packages=[],
            gateway=rattler.Gateway(cache_dir=tmp_path / "rc"),
        )
    )
    assert sorted(r.name.normalized for r in records) == ["demo-data", "libpng", "pngtool", "zlib"]
    asyncio.run(
        rattler.install(records, tmp_path / "env", cache_dir=tmp_path / "pkgs", show_progress=False)
    )
    assert (tmp_path / "env/share/pngtool/README").exists()

    # nothing changed: one request per subdir, no published file written (the state
    # notes the check, for monitoring)
    def published() -> dict[Path, int]:
        return {
            p: p.stat().st_mtime_ns
            for p in mirror.rglob("*")
            if p.is_file() and ".ferry" not in p.relative_to(mirror).parts
        }

    before_files = published()
    start = log_length(nginx)
    again = ferry("sync", str(job))
    assert again.exit_code == 0 and "up to date" in again.output
    upstream_requests = [r for r in requests_since(nginx, start) if f"/{root.name}/" in r]
    assert len(upstream_requests) == 2 and all(" 304 " in r for r in upstream_requests)
    assert published() == before_files

    # upstream adds, hot-fixes and removes; the mirror follows
    write_package(root, Spec("zlib", "1.3.2", "h0_0", subdir="linux-64", license="Zlib"))
    (root / "noarch/demo-data-2024.1-0.conda").unlink()
    write_package(root, Spec("demo-data", "2024.2", "0", noarch="generic", license="CC0-1.0"))
    reindex(root)

    def hotfix(document: dict[str, object]) -> None:
        records = document["packages.conda"]
        records["libpng-1.6.43-h1_0.conda"]["depends"] = ["zlib >=1.3,<2"]  # type: ignore[index]

    edit_repodata(root, "linux-64", hotfix)
    yesterday = {p.name for p in (mirror / "noarch/shards").iterdir()}
    third = ferry("sync", str(job), "--json", str(tmp_path / "third.json"))
    assert third.exit_code == 0, third.output
    summary = load(tmp_path / "third.json")
    assert summary["totals"] == {
        "added": 2,
        "updated": 1,
        "removed": 1,
        "bytes": summary["totals"]["bytes"],
    }
    mirrored = load(mirror / "linux-64/repodata.json")
    assert mirrored["packages.conda"]["libpng-1.6.43-h1_0.conda"]["depends"] == ["zlib >=1.3,<2"]
    assert "zlib-1.3.2-h0_0.conda" in mirrored["packages.conda"]
    # pruned from repodata, kept on disk for its grace: yesterday's clients still get it
    assert files(mirror)["noarch"] == ["demo-data-2024.1-0.conda", "demo-data-2024.2-0.conda"]
    assert "demo-data-2024.1-0.conda" not in load(mirror / "noarch/repodata.json")["packages.conda"]
    cached = requests.get(f"{nginx.url}/{mirror.name}/noarch/demo-data-2024.1-0.conda", timeout=10)
    assert cached.status_code == 200  # a client with yesterday's repodata
    index = read_msgpack_zst((mirror / "noarch/repodata_shards.msgpack.zst").read_bytes())
    stale = yesterday - {f"{d.hex()}.msgpack.zst" for d in index["shards"].values()}
    assert stale  # demo-data's shard changed
    for name in stale:  # a client with yesterday's shard index
        url = f"{nginx.url}/{mirror.name}/noarch/shards/{name}"
        assert requests.get(url, timeout=10).status_code == 200
    assert assert_consistent(mirror) == 5
    assert ferry("verify", str(mirror)).exit_code == 0
    early = ferry("gc", str(mirror))  # not due yet
    assert early.exit_code == 0
    assert re.fullmatch(
        r"deleted 0 files; \d+ files in their grace, the next due \S+Z\n", early.output
    )
    assert len(files(mirror)["noarch"]) == 2
    assert ferry("gc", str(mirror), "--now").exit_code == 0
    assert files(mirror)["noarch"] == ["demo-data-2024.2-0.conda"]


@pytest.mark.parametrize("kind", ["s3", "sftp", "ftp"])
def test_other_gateways(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    root, _ = upstream
    if kind == "s3":
        moto: Server = request.getfixturevalue("moto")
        client = boto3.client("s3", endpoint_url=moto.url)
        for path in root.rglob("*"):
            if path.is_file() and ".cache" not in path.parts:
                client.put_object(
                    Bucket="ferry",
                    Key=f"up-{tmp_path.name}/{path.relative_to(root)}",
                    Body=path.read_bytes(),
                )
        extra = (
            f"source_options: {{endpoint_url: '{moto.url}'}}\n"
            f"target_options: {{endpoint_url: '{moto.url}'}}\n"
        )
        source, target = f"s3://ferry/up-{tmp_path.name}", f"s3://ferry/mirror-{tmp_path.name}"
    elif kind == "sftp":
        sshd: Server = request.getfixturevalue("sshd")
        shutil.copytree(root, sshd.root / tmp_path.name)
        extra = (
            f"source_options: {{key_file: '{sshd.extra['key_file']}', "
            f"known_hosts: '{sshd.extra['known_hosts']}'}}\n"
        )
        source, target = f"{sshd.url}/{tmp_path.name}", str(tmp_path / "mirror")
    else:
        ftpd: Server = request.getfixturevalue("ftpd")
        shutil.copytree(root, ftpd.root / tmp_path.name)
        extra, source, target = "", f"{ftpd.url}/{tmp_path.name}", str(tmp_path / "mirror")
    # copied by worker processes, which open each gateway from its URL and options
    job = job_yaml(tmp_path / "job.yaml", source, target, f"{FILTERS}{extra}processes: 2\n")
    result = ferry("sync", str(job))
    assert result.exit_code == 0, result.output
    if kind == "s3":
        local = tmp_path / "copy"
        client = boto3.client("s3", endpoint_url=moto.url)
        pages = client.list_objects_v2(Bucket="ferry", Prefix=f"mirror-{tmp_path.name}/")
        for obj in pages["Contents"]:
            dest = local / obj["Key"].split("/", 1)[1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(client.get_object(Bucket="ferry", Key=obj["Key"])["Body"].read())
        target = str(local)
    assert files(Path(target)) == EXPECTED
    assert assert_consistent(Path(target)) == 4
    again = ferry("sync", str(job))
    assert "up to date" in again.output
    assert "s3cret" not in result.output + again.output
    for written in Path(target).rglob("*.json"):  # state, repodata: never a credential
        assert b"s3cret" not in written.read_bytes()


def test_faults_never_publish_corrupt_packages(
    nginx: Server, upstream: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = upstream
    victim = root / "linux-64/zlib-1.3.1-h0_0.conda"
    good = victim.read_bytes()
    victim.write_bytes(good[:500] + bytes([good[500] ^ 0xFF]) + good[501:])  # same size
    proxy = FaultProxy(nginx.port)
    try:
        proxied = url.replace(f":{nginx.port}", f":{proxy.port}")
        mirror = tmp_path / "mirror"
        job = job_yaml(
            tmp_path / "job.yaml", proxied, str(mirror), "jobs: 2\nsource_options: {retries: 4}\n"
        )
        proxy.plan("status:503", "drop:400", "status:500", "drop:1200", "flip:900")
        result = ferry("sync", str(job), "--json", str(tmp_path / "r.json"))
        assert result.exit_code == 3, result.output
        report = load(tmp_path / "r.json")
        failed = {f for s in report["subdirs"] for f in s["failures"]}
        assert failed == {"zlib-1.3.1-h0_0.conda"}
        assert "zlib-1.3.1-h0_0.conda" in result.output and "sha256" in result.output
        assert not (mirror / "linux-64/zlib-1.3.1-h0_0.conda").exists()
        assert (
            "zlib-1.3.1-h0_0.conda" not in load(mirror / "linux-64/repodata.json")["packages.conda"]
        )
        assert assert_consistent(mirror) == 7
        victim.write_bytes(good)
        healed = ferry("sync", str(job))
        assert healed.exit_code == 0, healed.output
        assert assert_consistent(mirror) == 8
    finally:
        proxy.close()


def test_hostile_filenames_are_skipped_and_named(
    nginx: Server, upstream: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = upstream
    for bad in ("../escape.conda", "/etc/evil.conda", "sub/dir.conda"):

        def poison(document: dict[str, object], bad: str = bad) -> None:
            records = document["packages.conda"]
            records[bad] = dict(next(iter(records.values())))  # type: ignore[call-overload]

        edit_repodata(root, "linux-64", poison)
        mirror = tmp_path / "deep" / "mirror"
        job = job_yaml(tmp_path / "job.yaml", url, str(mirror))
        result = ferry("sync", str(job))
        assert result.exit_code == 3, result.output  # partial: the rest is mirrored
        assert result.stderr.count("unsafe package file name") == 1
        assert not (tmp_path / "deep" / "escape.conda").exists()
        assert not list((tmp_path / "deep").glob("**/*dir.conda"))
        assert bad not in load(mirror / "linux-64" / "repodata.json")["packages.conda"]
        assert assert_consistent(mirror) > 0
        reindex(root)


def test_second_run_on_a_locked_target_exits_75(upstream: tuple[Path, str], tmp_path: Path) -> None:
    _, url = upstream
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror))
    with open_gateway(str(mirror)) as gateway, gateway.lock("linux-64/.ferry.lock"):
        result = ferry("sync", str(job))
    assert result.exit_code == 75
    assert "held by pid" in result.output
    # the other subdir is synced, and its lock let go
    assert load(mirror / "noarch" / "repodata.json")["packages.conda"]
    assert not (mirror / "linux-64" / "repodata.json").exists()
    assert not list(mirror.glob("*/.ferry.lock"))


def _fail_commit_of(subdir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``subdir``'s commit fails once the next subdir's has started, its parts queued
    in the workers behind this one's, which are never asked for."""
    finish = sync.Committing.finish

    def failing(self: sync.Committing, meanwhile: Any = None) -> Any:
        if self._view.subdir == subdir:
            if meanwhile is not None:
                meanwhile()
            raise FerryError(f"{subdir}: the disk said no")
        return finish(self, meanwhile)

    monkeypatch.setattr(sync.Committing, "finish", failing)


def test_a_subdir_that_fails_to_commit_fails_alone(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subdirs share one transfer, then each is committed on its own: one whose
    commit fails is reported and noted in its state; the other is published. The next
    run publishes the failed one (it once found upstream unchanged, said "up to date"
    and left it unpublished for good)."""
    _, url = upstream
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror))
    _fail_commit_of("linux-64", monkeypatch)
    result = ferry("sync", str(job), "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 1, result.output
    report = {s["subdir"]: s for s in load(tmp_path / "r.json")["subdirs"]}
    assert report["linux-64"]["status"] == "failed"
    assert "the disk said no" in report["linux-64"]["message"]
    assert report["noarch"]["status"] == "synced"
    assert load(mirror / "noarch" / "repodata.json")["packages.conda"]
    assert not (mirror / "linux-64" / "repodata.json").exists()
    assert load(mirror / ".ferry" / "linux-64.json")["last_run"]["result"] == "failed"
    assert not list(mirror.glob("*/.ferry.lock"))
    monkeypatch.undo()
    result = ferry("sync", str(job), "--json", str(tmp_path / "again.json"))
    assert result.exit_code == 0, result.output
    assert load(mirror / "linux-64" / "repodata.json")["packages.conda"]
    assert {s["status"] for s in load(tmp_path / "again.json")["subdirs"]} == {"synced"}


def test_channeldata_made_ahead_is_what_the_published_subdirs_make(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """channeldata.json is made while the last subdir waits for its parts: what is
    written is what every published subdir's entries make, byte for byte."""
    _, url = upstream
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror))
    written: list[tuple[bytes | None, bytes]] = []
    write = sync.write_channeldata

    def spy(target: Any, subdirs: list[str], entries: list[Any], made: Any = None) -> Any:
        written.append((made, channeldata_json(subdirs, entries)))
        return write(target, subdirs, entries, made)

    monkeypatch.setattr(sync, "write_channeldata", spy)
    assert ferry("sync", str(job)).exit_code == 0
    [(made, after)] = written
    assert made is not None and made == after == (mirror / "channeldata.json").read_bytes()
    assert set(load(mirror / "channeldata.json")["subdirs"]) == {"linux-64", "noarch"}


def test_a_state_never_vouches_for_a_file_not_yet_durable(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whenever a subdir's state is saved naming files verified, every file written so
    far is durable: also when the first commit fails before anything of its own is
    flushed (the others' journals are saved after it, the failed one's state at once)."""
    _, url = upstream
    job = job_yaml(tmp_path / "job.yaml", url, str(tmp_path / "mirror"))
    _fail_commit_of("linux-64", monkeypatch)
    save = SubdirState.save
    vouched = []

    def checked(state: SubdirState, target: Any) -> None:
        if state.verified:
            assert not target._unflushed and not target._syncing, state.subdir
            vouched.append(state.subdir)
        save(state, target)

    monkeypatch.setattr(SubdirState, "save", checked)
    assert ferry("sync", str(job)).exit_code == 1
    assert "linux-64" in vouched  # the failed one's state, saved with its verified files


def test_a_file_upstreams_index_names_but_upstream_lacks_is_named_and_fetched_later(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    """An upstream caught between writing its index and its files: the run publishes
    everything else, names the file as upstream's gap (not a path of the user's to
    check), exits 3, and the next run fetches it once it is there."""
    root, url = upstream
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror))
    gone = root / "noarch/demo-data-2024.1-0.conda"
    held = gone.read_bytes()
    gone.unlink()
    first = ferry("sync", str(job), "--json", str(tmp_path / "r.json"))
    assert first.exit_code == 3, first.output
    subdirs = load(tmp_path / "r.json")["subdirs"]
    failures = {name: why for s in subdirs for name, why in s["failures"].items()}
    assert list(failures) == [gone.name]
    assert failures[gone.name].endswith(f"({GONE_UPSTREAM})")
    assert gone.name not in load(mirror / "noarch/repodata.json")["packages.conda"]
    gone.write_bytes(held)
    assert ferry("sync", str(job)).exit_code == 0
    assert gone.name in load(mirror / "noarch/repodata.json")["packages.conda"]
    assert assert_consistent(mirror) > 0


def test_noarch_failing_its_first_commit_is_not_indexed_from_its_files(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel without noarch gets an empty one (clients refuse a channel without
    it), but a job's own noarch whose commit failed is left unpublished: its package
    files had landed, and indexing them would have served records made from the files
    instead of upstream's (its hot-fixes lost) as if it were a channel of our own."""
    _, url = upstream
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror))
    _fail_commit_of("noarch", monkeypatch)
    assert ferry("sync", str(job)).exit_code == 1
    assert list((mirror / "noarch").glob("*.conda"))  # landed, named by nothing
    assert not (mirror / "noarch" / "repodata.json").exists()
    monkeypatch.undo()
    assert ferry("sync", str(job)).exit_code == 0
    assert assert_consistent(mirror) > 0


@pytest.mark.parametrize(
    ("step", "subdirs", "owed"),
    [
        ("write_channeldata", "[linux-64, noarch]", "channeldata.json"),
        ("ensure_noarch", "[linux-64]", "noarch/repodata.json"),  # clients need one
    ],
)
def test_a_run_stopped_before_the_channels_own_files_has_the_next_one_write_them(
    upstream: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    subdirs: str,
    owed: str,
) -> None:
    """The channel's own files are written once every subdir is committed: a run
    that fails (or is killed) in between leaves them owed, and the next run, upstream
    unchanged, compares in full and writes them instead of saying "up to date"."""
    _, url = upstream
    mirror = tmp_path / "mirror"
    job = tmp_path / "job.yaml"
    job.write_text(f"source: {url}\ntarget: {mirror}\nsubdirs: {subdirs}\n")

    def failing(*args: Any, **kw: Any) -> None:
        raise GatewayError(str(mirror), "the disk said no")

    monkeypatch.setattr(sync, step, failing)
    assert ferry("sync", str(job)).exit_code == 1
    assert load(mirror / "linux-64" / "repodata.json")["packages.conda"]
    assert not (mirror / owed).exists()
    monkeypatch.undo()
    again = ferry("sync", str(job))
    assert again.exit_code == 0 and "up to date" not in again.output, again.output
    assert (mirror / owed).exists() and not (mirror / ".ferry" / "channeldata.owed").exists()
    assert assert_consistent(mirror) > 0
    quiet = ferry("sync", str(job))
    assert quiet.exit_code == 0 and "up to date" in quiet.output, quiet.output


def test_prune_beyond_fraction_refuses_without_force(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = upstream
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror), "prune: true\ngrace: 0\n")
    assert ferry("sync", str(job)).exit_code == 0
    job_yaml(job, url, str(mirror), "prune: true\ngrace: 0\nfilters: {include: [zlib]}\n")
    refused = ferry("sync", str(job))
    assert refused.exit_code == 1 and "max_prune_fraction" in refused.output
    assert len(files(mirror)["linux-64"]) == 6
    forced = ferry("sync", str(job), "--force")
    assert forced.exit_code == 0, forced.output
    assert files(mirror)["linux-64"] == ["zlib-1.3.1-h0_0.conda", "zlib-1.2.13-h0_0.tar.bz2"]


def test_dry_run_and_explain_write_nothing(upstream: tuple[Path, str], tmp_path: Path) -> None:
    _, url = upstream
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror), FILTERS)
    plan = ferry("sync", str(job), "--dry-run", "--json", str(tmp_path / "plan.json"))
    assert plan.exit_code == 0 and "add" in plan.output
    assert load(tmp_path / "plan.json")["subdirs"][0]["plan"]["add"] == EXPECTED["linux-64"]
    explain = ferry("sync", str(job), "--explain", "gpltool")
    assert "drop linux-64/gpltool-1.0-h3_0.conda" in explain.output
    assert not mirror.exists()


def test_base_url_is_honoured(nginx: Server, tmp_path: Path) -> None:
    root = nginx.root / f"split-{tmp_path.name}"
    build_upstream(root)
    packages = nginx.root / f"pkgs-{tmp_path.name}"
    for subdir in ("linux-64", "noarch"):
        (packages / subdir).mkdir(parents=True)
        for path in (root / subdir).glob("*.conda"):
            path.rename(packages / subdir / path.name)
        for path in (root / subdir).glob("*.tar.bz2"):
            path.rename(packages / subdir / path.name)

        def rebase(document: dict[str, object], subdir: str = subdir) -> None:
            document["info"] = {"subdir": subdir, "base_url": f"../../{packages.name}/{subdir}/"}
            document["repodata_version"] = 2

        edit_repodata(root, subdir, rebase)
    mirror = tmp_path / "mirror"
    url = f"{nginx.url}/{root.name}"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror), f"{FILTERS}processes: 2\n")
    result = ferry("sync", str(job))  # the workers fetch from where base_url points
    assert result.exit_code == 0, result.output
    assert files(mirror) == EXPECTED
    assert "base_url" not in load(mirror / "linux-64/repodata.json")["info"]


def test_publish_custom_packages_and_verify(tmp_path: Path) -> None:
    custom = tmp_path / "custom"
    built = tmp_path / "built"
    one = write_package(built, Spec("inhouse", "1.0", "0", subdir="linux-64"))
    two = write_package(built, Spec("inhouse-docs", "1.0", "0", noarch="generic"), ".tar.bz2")
    result = ferry("publish", str(one), str(two), "--to", str(custom))
    assert result.exit_code == 0, result.output
    assert "inhouse-1.0-0.conda" in load(custom / "linux-64/repodata.json")["packages.conda"]
    assert "inhouse-docs-1.0-0.tar.bz2" in load(custom / "noarch/repodata.json")["packages"]
    assert ferry("verify", str(custom)).exit_code == 0
    (custom / "linux-64/inhouse-1.0-0.conda").write_bytes(b"garbage")
    (custom / "noarch/stray-1.0-0.conda").write_bytes(b"x")
    (custom / "noarch/inhouse-docs-1.0-0.tar.bz2").unlink()
    bad = ferry("verify", str(custom), "--json", str(tmp_path / "v.json"))
    assert bad.exit_code == 1
    findings = load(tmp_path / "v.json")
    assert len(findings["corrupt"]) == 1 and len(findings["missing"]) == 1
    assert findings["extra"] == ["noarch/stray-1.0-0.conda"]
    last = bad.stderr.strip().splitlines()[-1]  # the fix, in one line
    assert last.startswith(f"ferry: error: {custom}: 2 files missing or corrupt: ")
    assert "publish them again" in last and "1 file no repodata names" in last
    broken = tmp_path / "broken-1.0-0.conda"
    broken.write_bytes(b"nope")
    refused = ferry("publish", str(broken), "--to", str(custom))
    assert refused.exit_code == 1 and "not a valid package" in refused.output


def test_verify_names_a_subdir_without_repodata_and_its_fix(tmp_path: Path) -> None:
    channel = tmp_path / "ch"
    write_package(channel, Spec("inhouse", "1.0", "0", subdir="linux-64"))
    found = ferry("verify", str(channel))
    assert found.exit_code == 1
    assert "no repodata: linux-64/repodata.json is missing" in found.stderr
    last = found.stderr.strip().splitlines()[-1]
    assert last == (
        f"ferry: error: {channel}: 1 subdir without repodata: a mirror's next sync "
        f"publishes it (a channel of your own: 'ferry index {channel}')"
    )
    assert ferry("index", str(channel)).exit_code == 0
    assert ferry("verify", str(channel)).exit_code == 0


def test_publish_into_a_mirror_keeps_upstream_records(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = upstream

    def hotfix(document: dict[str, object]) -> None:
        document["packages.conda"]["zlib-1.3.1-h0_0.conda"]["depends"] = ["fixed"]  # type: ignore[index]

    edit_repodata(root, "linux-64", hotfix)
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror))
    assert ferry("sync", str(job)).exit_code == 0
    own = write_package(tmp_path / "built", Spec("inhouse", "1.0", "0", subdir="linux-64"))
    assert ferry("publish", str(own), "--to", str(mirror)).exit_code == 0
    records = load(mirror / "linux-64/repodata.json")["packages.conda"]
    assert records["zlib-1.3.1-h0_0.conda"]["depends"] == ["fixed"]
    assert "inhouse-1.0-0.conda" in records
    again = ferry("sync", str(job))  # the custom package survives a sync with prune
    assert again.exit_code == 0
    assert "inhouse-1.0-0.conda" in load(mirror / "linux-64/repodata.json")["packages.conda"]


def test_a_single_platform_job_still_serves_noarch(
    nginx: Server, upstream: tuple[Path, str], tmp_path: Path
) -> None:
    mirror = nginx.root / f"one-{tmp_path.name}"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source: {upstream[1]}\ntarget: {mirror}\nsubdirs: [linux-64]\n"
        "filters: {include: [zlib]}\n"
    )
    assert ferry("sync", str(job)).exit_code == 0
    assert load(mirror / "noarch/repodata.json")["packages.conda"] == {}
    records = asyncio.run(
        rattler.solve(
            sources=[rattler.Channel(f"{nginx.url}/{mirror.name}")],
            specs=["zlib"],
            platforms=["linux-64", "noarch"],
            virtual_packages=[],
            gateway=rattler.Gateway(cache_dir=tmp_path / "rc"),
        )
    )
    assert [r.name.normalized for r in records] == ["zlib"]


def test_sync_verify_repairs_what_it_can_and_withdraws_what_it_cannot(
    synced: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    root, mirror, job = synced
    deleted, corrupt, lost = (
        mirror / "linux-64/zlib-1.3.1-h0_0.conda",
        mirror / "noarch/demo-data-2024.1-0.conda",
        mirror / "linux-64/libpng-1.6.43-h1_0.conda",
    )
    deleted.unlink()
    data = bytearray(corrupt.read_bytes())
    data[200] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    lost.unlink()
    (root / "linux-64" / lost.name).unlink()  # upstream lost it too: cannot be repaired
    assert ferry("sync", str(job)).exit_code == 0  # without --verify: nothing looked at

    result = ferry("sync", str(job), "--verify", "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 3, result.stderr
    assert deleted.exists() and corrupt.read_bytes() != bytes(data)
    published = load(mirror / "linux-64/repodata.json")["packages.conda"]
    assert lost.name not in published  # withdrawn, never published over a missing file
    assert lost.name in result.stderr
    assert assert_consistent(mirror) > 0
    repaired = {n for s in load(tmp_path / "r.json")["subdirs"] for n in s["files"]["repaired"]}
    assert repaired == {deleted.name, corrupt.name}


def test_a_mirror_damaged_behind_its_back_is_reported_and_mended(
    synced: tuple[Path, Path, Path],
) -> None:
    """Shards are trusted by their names on a normal night, pages by the digests the
    state keeps; verify reads the shards, and sync --verify writes damaged shards and
    every page again. A damaged state file or log costs a
    full comparison or a fresh log, never the run."""
    _, mirror, job = synced
    corrupt, lost = sorted((mirror / "linux-64/shards").iterdir())[:2]
    corrupt.write_bytes(corrupt.read_bytes()[:-3])
    lost.unlink()
    (mirror / ".ferry/noarch.json").write_bytes(b"null")
    (mirror / "noarch/repodata.jlap").write_bytes(b"\xff" * 200)
    zst = mirror / "linux-64/repodata.json.zst"
    zst.write_bytes(zst.read_bytes()[:-10])
    pages = [mirror / "linux-64/index.html", next((mirror / "linux-64/pages").iterdir())]
    intact = [page.read_bytes() for page in pages]
    for page in pages:
        page.write_bytes(b"damaged")

    found = ferry("verify", str(mirror))
    assert found.exit_code == 1
    assert f"corrupt: linux-64/shards/{corrupt.name}: its sha256 is not" in found.stderr
    assert f"missing: linux-64/shards/{lost.name}" in found.stderr
    assert "corrupt: linux-64/repodata.json.zst: does not hold repodata.json" in found.stderr
    assert "corrupt: noarch/repodata.jlap: not a verified log leading to" in found.stderr
    assert "'ferry sync JOB --verify' fetches" in found.stderr.strip().splitlines()[-1]

    result = ferry("sync", str(job), "--verify")
    assert result.exit_code == 0, result.stderr
    assert ".ferry/noarch.json: unreadable" in result.stderr
    assert f"linux-64/shards/{corrupt.name}: damaged; writing it again" in result.stderr
    assert [page.read_bytes() for page in pages] == intact  # pages are written anew
    again = ferry("verify", str(mirror))
    assert again.exit_code == 0, again.stderr
    assert "shards in 2 subdirs: 0 missing, 0 corrupt, 0 extra" in again.output
    assert assert_consistent(mirror) > 0


def test_a_damaged_index_stops_snapshot_and_export_with_its_fix(
    synced: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, mirror, _ = synced
    (mirror / "linux-64/repodata.json").write_bytes(b'{"packages": {"a.tar.bz2": []}}')
    for args in (["snapshot", "create", str(mirror)], ["export", str(mirror), str(tmp_path / "b")]):
        result = ferry(*args)
        assert result.exit_code == 1, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"ferry: error: {mirror}/linux-64/repodata.json: not a repodata document (the "
            "record of 'a.tar.bz2' names no package or size); a sync with --verify, or ferry "
            "index, writes it anew"
        ]


def test_packages_are_durable_before_any_repodata_names_them(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every package written is flushed before its subdir's repodata is written (the
    shards and pages, which nothing links yet, may be started before the flush)."""
    from conda_ferry.gateways.localfs import LocalGateway

    events: list[tuple[str, str]] = []
    write, flush = LocalGateway._write, LocalGateway.flush

    def recording_write(self: LocalGateway, path: str, *args: Any) -> Any:
        events.append(("write", path))
        return write(self, path, *args)

    def recording_flush(self: LocalGateway) -> None:
        events.append(("flush", ""))
        flush(self)

    monkeypatch.setattr(LocalGateway, "_write", recording_write)
    monkeypatch.setattr(LocalGateway, "flush", recording_flush)
    _, url = upstream
    job = job_yaml(tmp_path / "job.yaml", url, str(tmp_path / "mirror"), "processes: 1\n")
    assert ferry("sync", str(job)).exit_code == 0
    for subdir in ("linux-64", "noarch"):
        written = [
            (i, path)
            for i, (kind, path) in enumerate(events)
            if kind == "write" and path.startswith(f"{subdir}/")
        ]
        last_package = max(i for i, path in written if path.endswith((".conda", ".tar.bz2")))
        first_repodata = min(i for i, path in written if "/repodata" in path)
        assert ("flush", "") in events[last_package:first_repodata]


READ_AHEAD = ["channeldata.json", "linux-64/run_exports.json", "noarch/run_exports.json"]


def test_what_upstream_says_of_its_packages_is_read_while_they_transfer(
    nginx: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """channeldata.json and each subdir's run_exports.json are read in a thread of
    their own, on a gateway of their own (over HTTP: libcurl in that thread), from
    before the first package is asked for; the mirror says of its packages exactly
    what it says when they are read when asked, and a file that could not be read
    ahead is read then."""
    shutil.copytree(
        Path(__file__).parent.parent / "configs" / "demo-channel",
        nginx.root / f"described-{tmp_path.name}",
    )
    up = f"{nginx.url}/described-{tmp_path.name}"
    events: list[str] = []
    start, copy_all = upstream.ReadAhead.__init__, transfer.copy_all

    def starting(self: upstream.ReadAhead, *args: Any) -> None:
        events.append("read ahead")
        start(self, *args)

    def copying(*args: Any) -> Any:
        events.append("transfer")
        return copy_all(*args)

    monkeypatch.setattr(upstream.ReadAhead, "__init__", starting)
    monkeypatch.setattr(transfer, "copy_all", copying)
    taken, take = [], upstream.ReadAhead.take

    def counted(self: upstream.ReadAhead, path: str) -> bytes | None:
        data = take(self, path)
        taken.append((path, data is not None))
        return data

    said = []
    for run, take_as in enumerate([counted, lambda self, path: None]):
        monkeypatch.setattr(upstream.ReadAhead, "take", take_as)
        mirror = tmp_path / f"mirror{run}"
        job = job_yaml(tmp_path / f"job{run}.yaml", up, str(mirror), "processes: 1\n")
        result = ferry("sync", str(job))
        assert result.exit_code == 0, result.output
        said.append(
            {
                path: (mirror / path).read_bytes()
                for path in ("channeldata.json", "linux-64/run_exports.json")
            }
        )
        assert events[-2:] == ["read ahead", "transfer"]
    assert said[0] == said[1]
    assert b"zlib" in said[0]["channeldata.json"]
    # the first run's files all came from the read-ahead
    assert sorted(taken) == [(p, True) for p in sorted(READ_AHEAD)]
    monkeypatch.undo()

    def unopened() -> Any:
        raise OSError("no second connection")

    ahead = upstream.ReadAhead(unopened, ["channeldata.json", "gone.json"])
    assert ahead.take("channeldata.json") is None  # read when asked instead

    def unopened_later() -> Any:
        time.sleep(0.2)  # the file is asked for (and waited for) before this fails
        raise OSError("no second connection")

    assert upstream.ReadAhead(unopened_later, ["x.json"]).take("x.json") is None
    source = open_gateway(up)
    with pytest.raises(GatewayError):
        upstream.ReadAhead(lambda: open_gateway(up), ["gone.json"]).take("gone.json")
    nothing = upstream.ReadAhead(lambda: open_gateway(up), ["x.json"])
    assert upstream.Descriptions(source, nothing).extras("noarch", {}) == {}
