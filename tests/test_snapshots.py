"""Snapshots: a client pinned to one keeps what the live channel prunes or hot-fixes,
its files outlive prune and gc until it is deleted, and a restore is an update that
JLAP clients follow."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import rattler
import rattler.exceptions

from conda_ferry.gateways import GatewayOptions, open_gateway
from tests.helpers import ferry, load, records
from tests.mirrorcheck import check_channel
from tests.pkgmaker import Spec, write_package
from tests.servers import Server, access_log
from tests.test_index_clients import requests_for, solve
from tests.upstream import build_upstream, edit_repodata, job_yaml, reindex

GONE = "pngtool-1.0-h2_0.tar.bz2"  # removed upstream after the snapshot
FIXED = "libpng-1.6.43-h1_0.conda"  # hot-fixed upstream after the snapshot
NEW_DEPENDS = ["zlib >=1.3.1,<1.3.2"]


def ok(*args: str) -> str:
    result = ferry(*args)
    assert result.exit_code == 0, result.output
    return str(result.output)


def refused(code: int, *args: str) -> str:
    result = ferry(*args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return str(result.output)


def upstream_moves_on(upstream: Path) -> None:
    """A package removed and another hot-fixed, as a channel's maintainers do."""
    (upstream / "linux-64" / GONE).unlink()
    reindex(upstream)

    def hotfix(document: dict[str, Any]) -> None:
        document["packages.conda"][FIXED]["depends"] = NEW_DEPENDS

    edit_repodata(upstream, "linux-64", hotfix)


def test_a_client_pinned_to_a_snapshot_keeps_what_the_channel_let_go(
    nginx: Server, tmp_path: Path
) -> None:
    upstream = tmp_path / "upstream"
    build_upstream(upstream)
    mirror = nginx.root / f"snap-{tmp_path.name[-12:]}"
    url = f"{nginx.url}/{mirror.name}"
    job = job_yaml(tmp_path / "job.yaml", str(upstream), str(mirror), "prune: true\ngrace: 0s\n")
    ok("sync", str(job))
    ok("snapshot", "create", str(mirror), "nov-1")
    old_fixed = records(mirror / "linux-64/repodata.json")[FIXED]

    upstream_moves_on(upstream)
    ok("sync", str(job))
    live = records(mirror / "linux-64/repodata.json")
    assert GONE not in live and live[FIXED]["depends"] == NEW_DEPENDS
    assert (mirror / "linux-64" / GONE).exists()  # pruned, grace 0, but the snapshot needs it
    with open_gateway(str(mirror)) as gateway:
        check_channel(gateway)
    assert "0 missing, 0 corrupt, 0 extra" in ok("verify", str(mirror))

    # A client on the snapshot solves and installs as of nov-1, over HTTP, the
    # packages coming from the live subdirs (CEP 15 base_url).
    pinned = solve(f"{url}/snapshots/nov-1", ["pngtool ==1.0"], tmp_path / "r1")
    by_name = {r.name.normalized: r for r in pinned}
    assert str(by_name["pngtool"].version) == "1.0"
    assert list(by_name["libpng"].depends) == old_fixed["depends"]
    prefix = tmp_path / "env"
    asyncio.run(rattler.install(pinned, prefix, cache_dir=tmp_path / "pkgs", show_progress=False))
    assert (prefix / "conda-meta").is_dir()
    assert any(f"/{mirror.name}/linux-64/{GONE}" in p for p in requests_for(nginx, "/"))
    with pytest.raises(rattler.exceptions.SolverError):
        solve(url, ["pngtool ==1.0"], tmp_path / "r2")

    # diff says what moved; the live channel's status and page list the snapshot
    changes = json.loads(ok("-q", "snapshot", "diff", str(mirror), "nov-1", "live", "--json", "-"))
    assert changes["subdirs"]["linux-64"] == {"added": [], "removed": [GONE], "changed": [FIXED]}
    status = json.loads(ok("-q", "status", str(mirror), "--json", "-"))
    assert all(row["snapshots"] == ["nov-1"] for row in status["subdirs"])
    assert "nov-1" in (mirror / "index.html").read_text()

    # Restore: the live channel equals the snapshot, and a JLAP client follows.
    from tests.oldrattler import old_fetch, old_rattler_python

    python, cache = old_rattler_python(), tmp_path / "old-cache"
    assert GONE not in old_fetch(python, url, cache)["linux-64"]
    ok("snapshot", "restore", str(mirror), "nov-1")
    snap = load(mirror / "snapshots/nov-1/linux-64/repodata.json")
    assert records(mirror / "linux-64/repodata.json") == records(
        mirror / "snapshots/nov-1/linux-64/repodata.json"
    )
    assert snap["info"]["base_url"] == "../../../linux-64/" and snap["repodata_version"] == 2
    before = len(access_log(nginx))
    assert GONE in old_fetch(python, url, cache)["linux-64"]
    log = access_log(nginx)[before:]
    assert any(f"/{mirror.name}/linux-64/repodata.jlap" in line and " 206 " in line for line in log)

    # The next sync moves forward again (a restore forgets upstream's validators).
    ok("sync", str(job))
    assert GONE not in records(mirror / "linux-64/repodata.json")

    # Deleting the snapshot lets the file go: after its grace, or now with gc --now.
    ok("snapshot", "delete", str(mirror), "nov-1")
    assert (mirror / "linux-64" / GONE).exists()
    assert f"linux-64/{GONE}" in ok("gc", str(mirror), "--now")
    assert not (mirror / "linux-64" / GONE).exists()
    assert "0 missing, 0 corrupt, 0 extra" in ok("verify", str(mirror))


def test_snapshots_on_s3(moto: Server, tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    build_upstream(upstream)
    # a bucket of its own, readable by anyone as S3 static hosting serves a channel
    bucket, prefix = "public-channel", f"snap-{tmp_path.name[-16:]}"
    client = boto3.client("s3", endpoint_url=moto.url)
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
    read = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}
    policy = {
        "Version": "2012-10-17",
        "Statement": [{**read, "Resource": f"arn:aws:s3:::{bucket}/*"}],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    target = f"s3://{bucket}/{prefix}"
    flags = ["--endpoint-url", moto.url]
    job = job_yaml(
        tmp_path / "job.yaml",
        str(upstream),
        target,
        f"prune: true\ngrace: 0s\ntarget_options: {{endpoint_url: '{moto.url}'}}\n",
    )
    ok("sync", str(job))
    ok("snapshot", "create", target, "before", *flags)
    upstream_moves_on(upstream)
    ok("sync", str(job))
    key = f"{prefix}/linux-64/{GONE}"
    assert client.head_object(Bucket=bucket, Key=key)
    with open_gateway(target, GatewayOptions(endpoint_url=moto.url)) as gateway:
        check_channel(gateway)
    assert "0 missing, 0 corrupt, 0 extra" in ok("verify", target, *flags)
    listed = json.loads(ok("-q", "snapshot", "list", target, "--json", "-", *flags))
    assert [s["name"] for s in listed["snapshots"]] == ["before"]

    # Served straight from the bucket (S3 static hosting), the snapshot is a channel.
    bucket_url = f"{moto.url}/{bucket}/{prefix}"
    pinned = solve(f"{bucket_url}/snapshots/before", ["pngtool ==1.0"], tmp_path / "r")
    assert "pngtool" in {r.name.normalized for r in pinned}
    env = tmp_path / "env"
    asyncio.run(rattler.install(pinned, env, cache_dir=tmp_path / "pkgs", show_progress=False))

    ok("snapshot", "restore", target, "before", *flags)
    for subdir in ("linux-64", "noarch"):
        live = client.get_object(Bucket=bucket, Key=f"{prefix}/{subdir}/repodata.json")
        held = client.get_object(
            Bucket=bucket, Key=f"{prefix}/snapshots/before/{subdir}/repodata.json"
        )
        assert records(live["Body"].read()) == records(held["Body"].read())
    ok("sync", str(job))
    ok("snapshot", "delete", target, "before", *flags)
    assert f"linux-64/{GONE}" in ok("gc", target, "--now", *flags)
    with pytest.raises(client.exceptions.ClientError):
        client.head_object(Bucket=bucket, Key=key)
    listed = json.loads(ok("-q", "snapshot", "list", target, "--json", "-", *flags))
    assert listed["snapshots"] == []


def test_a_job_keeps_its_newest_snapshots_and_never_a_pinned_one(tmp_path: Path) -> None:
    upstream, mirror = tmp_path / "upstream", tmp_path / "mirror"
    build_upstream(upstream)
    job = job_yaml(tmp_path / "job.yaml", str(upstream), str(mirror), "snapshots: {keep: 2}\n")

    def names() -> list[str]:
        listed = json.loads(ok("-q", "snapshot", "list", str(mirror), "--json", "-"))
        return [s["name"] for s in listed["snapshots"]]

    ok("sync", str(job))
    first = names()
    assert len(first) == 1
    ok("snapshot", "pin", str(mirror), first[0])
    ok("sync", str(job))
    assert names() == first  # nothing changed: no new snapshot

    taken = []
    for i in range(3):  # upstream changes between runs, within the same second
        write_package(upstream, Spec(f"extra{i}", noarch="generic"), ".conda")
        reindex(upstream)
        ok("sync", str(job))
        taken.append(names()[-1])
    assert len(set(taken)) == 3
    kept = names()
    assert first[0] in kept  # pinned: never retired
    assert len(kept) == 3 and kept[1:] == taken[-2:]
    assert "pinned" in refused(2, "snapshot", "delete", str(mirror), first[0])


def test_a_hold_stops_sync_until_released(synced: tuple[Path, Path, Path]) -> None:
    _, mirror, job = synced
    ok("snapshot", "create", str(mirror), "good")
    ok("snapshot", "restore", str(mirror), "good", "--subdir", "linux-64", "--hold")
    message = refused(1, "sync", str(job))
    assert "linux-64" in message and "held at snapshot good" in message
    assert "snapshot release" in message
    assert "held at snapshot good" in ok("status", str(mirror))
    ok("snapshot", "release", str(mirror))
    ok("sync", str(job))


def test_names_are_checked_and_snapshots_are_immutable(synced: tuple[Path, Path, Path]) -> None:
    _, mirror, _ = synced
    assert "not a snapshot name" in refused(2, "snapshot", "create", str(mirror), "../x")
    assert "not a snapshot name" in refused(2, "snapshot", "create", str(mirror), "live")
    ok("snapshot", "create", str(mirror), "one", "--subdir", "linux-64")
    shown = json.loads(ok("-q", "snapshot", "show", str(mirror), "one", "--json", "-"))
    assert sorted(shown["subdirs"]) == ["linux-64", "noarch"]  # noarch comes along
    assert "immutable" in refused(2, "snapshot", "create", str(mirror), "one")
    assert "no such snapshot" in refused(2, "snapshot", "show", str(mirror), "two")
    assert "no such snapshot" in refused(2, "snapshot", "restore", str(mirror), "two")
    assert "same records" in ok("snapshot", "diff", str(mirror), "one", "live")


def test_a_damaged_snapshot_holds_everything_until_it_is_deleted(tmp_path: Path) -> None:
    upstream, mirror = tmp_path / "upstream", tmp_path / "mirror"
    build_upstream(upstream)
    job = job_yaml(tmp_path / "job.yaml", str(upstream), str(mirror), "prune: true\ngrace: 0s\n")
    ok("sync", str(job))
    ok("snapshot", "create", str(mirror), "damaged")
    (mirror / "snapshots/damaged/linux-64/repodata.json").write_bytes(b'{"packages": [')
    upstream_moves_on(upstream)
    result = ferry("sync", str(job))
    assert result.exit_code == 0, result.output
    assert "snapshots/damaged/linux-64/repodata.json: not a repodata document" in result.output
    assert (mirror / "linux-64" / GONE).exists()  # cannot tell what it holds: kept
    assert "snapshots/damaged/linux-64/repodata.json" in refused(1, "verify", str(mirror))
    ok("snapshot", "delete", str(mirror), "damaged")
    assert f"linux-64/{GONE}" in ok("gc", str(mirror), "--now")


@pytest.mark.parametrize(
    "meta",
    [b'{"created": "x", "subdirs": [1, 2]}', b'{"created": "x", "subdirs": {"../x": {}}}', b"null"],
)
def test_a_damaged_snapshot_record_is_an_incomplete_snapshot(
    synced: tuple[Path, Path, Path], meta: bytes
) -> None:
    _, mirror, job = synced
    ok("snapshot", "create", str(mirror), "s1")
    (mirror / "snapshots/s1/snapshot.json").write_bytes(meta)
    listed = ok("snapshot", "list", str(mirror))
    assert "s1" in listed and "incomplete" in listed
    ok("sync", str(job))
    ok("gc", str(mirror), "--now")
    assert (mirror / "snapshots/s1/linux-64/repodata.json").exists()  # still held
    ok("snapshot", "delete", str(mirror), "s1")
