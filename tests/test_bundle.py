"""Across the air gap: export, carry, import; verified, in order, resumable."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import rattler

from tests.helpers import ferry, load
from tests.mirrorcheck import assert_consistent
from tests.pkgmaker import Spec, write_package
from tests.servers import Server, access_log
from tests.upstream import build_upstream, edit_repodata, job_yaml, reindex


def snapshot(mirror: Path) -> dict[str, Any]:
    """Records and package bytes of a mirror: what 'equal' means for two mirrors."""
    out: dict[str, Any] = {}
    for subdir in ("linux-64", "noarch"):
        document = load(mirror / subdir / "repodata.json")
        out[subdir] = {
            "records": {**document["packages"], **document["packages.conda"]},
            "files": {  # the published ones: removed files may be in their grace
                p.name: p.read_bytes()
                for p in (mirror / subdir).iterdir()
                if p.name in {**document["packages"], **document["packages.conda"]}
            },
        }
    return out


@pytest.fixture
def outside(nginx: Server, tmp_path: Path) -> dict[str, Path]:
    """An upstream, an outside mirror synced from it, and two signed bundles."""
    root = nginx.root / f"gap-{tmp_path.name}"
    build_upstream(root)
    mirror = tmp_path / "outside"
    job = job_yaml(tmp_path / "job.yaml", f"{nginx.url}/{root.name}", str(mirror), "prune: true\n")
    assert ferry("sync", str(job)).exit_code == 0
    key = tmp_path / "keys" / "ferry.key"
    key.parent.mkdir()
    assert ferry("keygen", str(key)).exit_code == 0
    first = ferry("export", str(mirror), str(tmp_path / "b1"), "--sign", str(key))
    assert first.exit_code == 0, first.output
    assert "full" in first.output

    write_package(root, Spec("newtool", "1.0", "0", subdir="linux-64", license="MIT"))
    (root / "linux-64/gpltool-1.0-h3_0.conda").unlink()
    reindex(root)

    def hotfix(document: dict[str, Any]) -> None:
        document["packages.conda"]["libpng-1.6.43-h1_0.conda"]["depends"] = ["zlib >=1.3,<2"]

    edit_repodata(root, "linux-64", hotfix)
    assert ferry("sync", str(job)).exit_code == 0
    second = ferry("export", str(mirror), str(tmp_path / "b2"), "--sign", str(key))
    assert second.exit_code == 0, second.output
    return {
        "mirror": mirror,
        "b1": tmp_path / "b1",
        "b2": tmp_path / "b2",
        "key": key,
        "pub": key.with_name("ferry.key.pub"),
        "root": root,
    }


def test_two_bundles_rebuild_the_outside_mirror_inside(
    nginx: Server, outside: dict[str, Path], tmp_path: Path
) -> None:
    inside = nginx.root / f"inside-{tmp_path.name}"
    pub = str(outside["pub"])
    info = ferry("bundle-info", str(outside["b2"]))
    assert "signed" in info.output and "follows" in info.output and "1 removals" in info.output
    one = ferry("import", str(outside["b1"]), "--to", str(inside), "--verify-key", pub)
    assert one.exit_code == 0, one.output
    assert_consistent(inside)

    # an old client holds the inside repodata now; it updates through JLAP later
    from tests.oldrattler import old_fetch, old_rattler_python

    python = old_rattler_python()
    cache = tmp_path / "old-cache"

    def fetch() -> dict[str, Any]:
        return old_fetch(python, f"{nginx.url}/{inside.name}", cache)

    assert "gpltool" in fetch()["names"]
    two = ferry("import", str(outside["b2"]), "--to", str(inside), "--verify-key", pub)
    assert two.exit_code == 0, two.output
    assert snapshot(inside) == snapshot(outside["mirror"])
    assert_consistent(inside)
    start = len(access_log(nginx))
    after = fetch()
    assert "newtool" in after["names"] and "gpltool" not in after["names"]
    log = access_log(nginx)[start:]
    assert any(f"/{inside.name}/linux-64/repodata.jlap" in line and " 206 " in line for line in log)

    # a run killed after recording the import, mid-way through the front page: the
    # repeat finishes it (found by the kill suite)
    (inside / ".index.html.0123456789ab.part").write_bytes(b"<html")
    again = ferry("import", str(outside["b2"]), "--to", str(inside), "--verify-key", pub)
    assert again.exit_code == 0 and "applied already" in again.output
    assert not list(inside.glob("*.part"))

    records = asyncio.run(
        rattler.solve(
            sources=[rattler.Channel(f"{nginx.url}/{inside.name}")],
            specs=["pngtool >=2"],
            platforms=["linux-64", "noarch"],
            virtual_packages=[],
            gateway=rattler.Gateway(cache_dir=tmp_path / "rc"),
        )
    )
    assert "libpng" in {r.name.normalized for r in records}
    assert ferry("verify", str(inside)).exit_code == 0


def test_import_into_s3(moto: Server, outside: dict[str, Path], tmp_path: Path) -> None:
    target = f"s3://ferry/inside-{tmp_path.name}"
    for bundle in ("b1", "b2"):
        result = ferry("import", str(outside[bundle]), "--to", target, "--endpoint-url", moto.url)
        assert result.exit_code == 0, result.output
    client = boto3.client("s3", endpoint_url=moto.url)
    local = tmp_path / "copy"
    listing = client.list_objects_v2(Bucket="ferry", Prefix=f"inside-{tmp_path.name}/")
    for obj in listing["Contents"]:
        dest = local / obj["Key"].split("/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(client.get_object(Bucket="ferry", Key=obj["Key"])["Body"].read())
    assert snapshot(local) == snapshot(outside["mirror"])


def _refused(bundle: Path, inside: Path, *extra: str) -> str:
    before = sorted(p for p in inside.rglob("*")) if inside.exists() else []
    result = ferry("import", str(bundle), "--to", str(inside), *extra)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    after = sorted(p for p in inside.rglob("*")) if inside.exists() else []
    assert before == after  # nothing written
    lines = result.output.strip().splitlines()
    return lines[-1]


def test_broken_bundles_are_refused_with_nothing_written(
    outside: dict[str, Path], tmp_path: Path
) -> None:
    inside = tmp_path / "inside"
    pub = str(outside["pub"])

    flipped = tmp_path / "flipped"
    shutil.copytree(outside["b1"], flipped)
    victim = next(p for p in flipped.rglob("*.conda"))
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert "corrupt" in _refused(flipped, inside)

    missing = tmp_path / "missing"
    shutil.copytree(outside["b1"], missing)
    shutil.rmtree(missing / "vol-0001")
    assert "vol-0001 missing" in _refused(missing, inside)

    assert "import the bundles in order" in _refused(outside["b2"], inside)

    tampered = tmp_path / "tampered"
    shutil.copytree(outside["b1"], tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["source"] = "somewhere else"
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    assert "signature does not verify" in _refused(tampered, inside, "--verify-key", pub)

    unsigned = tmp_path / "unsigned"
    shutil.copytree(outside["b1"], unsigned)
    (unsigned / "manifest.json.sig").unlink()
    assert "not signed" in _refused(unsigned, inside, "--verify-key", pub)

    climbing = tmp_path / "climbing"
    shutil.copytree(outside["b1"], climbing)
    manifest = json.loads((climbing / "manifest.json").read_text())
    manifest["files"][0]["path"] = "linux-64/../../../etc/evil.conda"
    (climbing / "manifest.json").write_text(json.dumps(manifest))
    assert "leaves the bundle" in _refused(climbing, inside)
    assert not (tmp_path / "etc").exists()


def test_gap_needs_allow_gap_or_a_full_bundle(outside: dict[str, Path], tmp_path: Path) -> None:
    inside = tmp_path / "inside"
    result = ferry("import", str(outside["b2"]), "--to", str(inside), "--allow-gap")
    assert result.exit_code == 0, result.output
    assert_consistent(inside)
    full = ferry("export", str(outside["mirror"]), str(tmp_path / "full"), "--full")
    assert full.exit_code == 0
    other = tmp_path / "other"
    assert ferry("import", str(tmp_path / "full"), "--to", str(other)).exit_code == 0
    assert snapshot(other) == snapshot(outside["mirror"])


def test_damaged_histories_cost_a_full_bundle_or_an_allowed_gap(
    outside: dict[str, Path], tmp_path: Path
) -> None:
    """Each side keeps a history of bundles; damaged, it is read as empty, and said."""
    mirror, inside = outside["mirror"], tmp_path / "inside"
    ok = ferry(
        "import", str(outside["b1"]), "--to", str(inside), "--verify-key", str(outside["pub"])
    )
    assert ok.exit_code == 0, ok.output
    (inside / ".ferry/imports.json").write_bytes(b'{"imported": [5]}')
    gap = ferry(
        "import", str(outside["b2"]), "--to", str(inside), "--verify-key", str(outside["pub"])
    )
    assert gap.exit_code == 1 and "imports.json: unreadable" in gap.stderr
    assert "--allow-gap" in gap.stderr.splitlines()[-1]

    (mirror / ".ferry/exports.json").write_bytes(b'{"exports": {"id": "x"}}')
    again = ferry("export", str(mirror), str(tmp_path / "b3"))
    assert again.exit_code == 0, again.output
    assert "exports.json: unreadable" in again.stderr and "full" in again.stdout


def test_big_packages_are_split_across_volumes(tmp_path: Path) -> None:
    channel = tmp_path / "custom"
    big = write_package(
        tmp_path / "built",
        Spec("bigdata", "1.0", "0", noarch="generic", files={"blob": os.urandom(2_600_000)}),
    )
    small = write_package(tmp_path / "built", Spec("small", "1.0", "0", noarch="generic"))
    assert ferry("publish", str(big), str(small), "--to", str(channel)).exit_code == 0
    result = ferry("export", str(channel), str(tmp_path / "bundle"), "--volume-size", "1MiB")
    assert result.exit_code == 0, result.output
    volumes = sorted(p.name for p in (tmp_path / "bundle").iterdir() if p.is_dir())
    assert len(volumes) >= 3
    assert all(
        sum(f.stat().st_size for f in (tmp_path / "bundle" / v).rglob("*") if f.is_file())
        <= 1 << 20
        for v in volumes
    )
    inside = tmp_path / "inside"
    assert ferry("import", str(tmp_path / "bundle"), "--to", str(inside)).exit_code == 0
    assert (inside / "noarch" / big.name).read_bytes() == big.read_bytes()


@pytest.mark.slow
def test_killed_import_reruns_to_the_same_state(tmp_path: Path) -> None:
    channel = tmp_path / "custom"
    built = [
        write_package(
            tmp_path / "built",
            Spec(f"p{i}", "1.0", "0", subdir="linux-64", files={"blob": os.urandom(2_000_000)}),
        )
        for i in range(30)
    ]
    assert ferry("publish", *map(str, built), "--to", str(channel)).exit_code == 0
    assert ferry("export", str(channel), str(tmp_path / "bundle")).exit_code == 0
    calm = tmp_path / "calm"
    assert ferry("import", str(tmp_path / "bundle"), "--to", str(calm)).exit_code == 0
    inside = tmp_path / "inside"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def written() -> int:
        return len(list((inside / "linux-64").glob("*.conda"))) if inside.exists() else 0

    moments = [
        lambda: written() >= 1,
        lambda: written() >= 10,
        lambda: written() >= 25,
        lambda: (inside / "linux-64/repodata.json.zst").exists(),
        lambda: (inside / "linux-64/repodata.json").exists(),
    ]
    kills = 0
    for moment in moments:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from mirror.cli import main; main()",
                "import",
                str(tmp_path / "bundle"),
                "--to",
                str(inside),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 30
        while proc.poll() is None and not moment() and time.monotonic() < deadline:
            time.sleep(0.001)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert_consistent(inside, ("linux-64",))
    assert kills >= 3
    done = ferry("import", str(tmp_path / "bundle"), "--to", str(inside))
    assert done.exit_code == 0, done.output
    assert load(calm / "linux-64/repodata.json") == load(inside / "linux-64/repodata.json")
    assert sorted(p.name for p in (inside / "linux-64").glob("*.conda")) == sorted(
        p.name for p in built
    )
    assert list(inside.rglob("*.part")) == []


def test_since_names_the_base_export(outside: dict[str, Path], tmp_path: Path) -> None:
    history = json.loads((outside["mirror"] / ".ferry/exports.json").read_text())["exports"]
    first = history[0]["id"]
    again = ferry("export", str(outside["mirror"]), str(tmp_path / "b3"), "--since", first)
    assert again.exit_code == 0, again.output
    manifest = json.loads((tmp_path / "b3/manifest.json").read_text())
    assert manifest["follows"] == first and not manifest["full"]
    assert any(f["path"].endswith("newtool-1.0-0.conda") for f in manifest["files"])
    unknown = ferry("export", str(outside["mirror"]), str(tmp_path / "b4"), "--since", "nope-1234")
    assert unknown.exit_code == 2 and "no export nope-1234" in unknown.output


def _unsign_and_edit(bundle: Path, edit: Any) -> None:
    """What an attacker without the key can do: edit the manifest, drop the signature."""
    (bundle / "manifest.json.sig").unlink(missing_ok=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_an_older_bundle_after_a_newer_one_is_a_refused_rollback(
    outside: dict[str, Path], tmp_path: Path
) -> None:
    inside = tmp_path / "inside"
    time.sleep(1.1)  # 'created' has a resolution of one second
    newer = tmp_path / "newer"
    signed = ["--sign", str(outside["key"])]
    assert ferry("export", str(outside["mirror"]), str(newer), "--full", *signed).exit_code == 0
    assert ferry("import", str(newer), "--to", str(inside)).exit_code == 0
    before = snapshot(inside)
    refused = ferry("import", str(outside["b1"]), "--to", str(inside), "--allow-gap")
    assert refused.exit_code == 1
    assert "roll the mirror back" in refused.stderr and "--allow-rollback" in refused.stderr
    assert snapshot(inside) == before

    backdated = tmp_path / "backdated"
    shutil.copytree(newer, backdated)

    def older(manifest: dict[str, Any]) -> None:
        manifest["id"] = "20200101T000000Z-deadbeef"
        manifest["created"] = "2020-01-01T00:00:00Z"

    _unsign_and_edit(backdated, older)
    assert "roll the mirror back" in ferry("import", str(backdated), "--to", str(inside)).stderr
    allowed = ferry("import", str(outside["b1"]), "--to", str(inside), "--allow-rollback")
    assert allowed.exit_code == 0, allowed.stderr


def test_an_unsigned_bundle_whose_repodata_lies_about_a_file_is_refused(
    outside: dict[str, Path], tmp_path: Path
) -> None:
    lying = tmp_path / "lying"
    shutil.copytree(outside["b1"], lying)
    index_path = next(lying.glob("vol-*/linux-64/repodata.json"))
    document = json.loads(index_path.read_bytes())
    victim = sorted(document["packages.conda"])[0]
    document["packages.conda"][victim]["sha256"] = "0" * 64
    data = json.dumps(document).encode()
    index_path.write_bytes(data)

    def match(manifest: dict[str, Any]) -> None:
        for item in manifest["files"]:
            if item["path"] == "linux-64/repodata.json":
                digest = hashlib.sha256(data).hexdigest()
                item.update(size=len(data), sha256=digest)
                item["pieces"][0].update(size=len(data), sha256=digest)

    _unsign_and_edit(lying, match)
    inside = tmp_path / "inside"
    result = ferry("import", str(lying), "--to", str(inside))
    assert result.exit_code == 1
    assert f"the record of {victim} is refused" in result.stderr
    assert not inside.exists() or not list(inside.rglob("*.conda"))


def test_snapshots_cross_the_air_gap_with_the_files_they_hold(tmp_path: Path) -> None:
    """A snapshot taken between exports arrives inside under its name, with a package
    that came and went upstream between the two exports."""
    from conda_ferry.gateways import open_gateway
    from tests.mirrorcheck import check_channel

    root, mirror, inside = tmp_path / "up", tmp_path / "outside", tmp_path / "inside"
    build_upstream(root)
    job = job_yaml(tmp_path / "job.yaml", str(root), str(mirror), "prune: true\ngrace: 0s\n")
    assert ferry("sync", str(job)).exit_code == 0
    assert ferry("export", str(mirror), str(tmp_path / "b1")).exit_code == 0

    brief = Spec("brief", "1.0", "0", subdir="linux-64")
    write_package(root, brief)
    reindex(root)
    assert ferry("sync", str(job)).exit_code == 0
    assert ferry("snapshot", "create", str(mirror), "nov-1").exit_code == 0
    (root / f"linux-64/{brief.stem}.conda").unlink()
    (root / "linux-64/gpltool-1.0-h3_0.conda").unlink()
    reindex(root)
    assert ferry("sync", str(job)).exit_code == 0  # both pruned live, held by nov-1
    two = ferry("export", str(mirror), str(tmp_path / "b2"))
    assert two.exit_code == 0 and "snapshot nov-1 of linux-64, noarch" in two.output

    for bundle in ("b1", "b2"):
        result = ferry("import", str(tmp_path / bundle), "--to", str(inside))
        assert result.exit_code == 0, result.output
    assert "snapshots nov-1" in result.output
    for side in (mirror, inside):
        assert f"{brief.stem}.conda" not in load(side / "linux-64/repodata.json")["packages.conda"]
    held = load(inside / "snapshots/nov-1/linux-64/repodata.json")
    assert held == load(mirror / "snapshots/nov-1/linux-64/repodata.json")
    assert (inside / f"linux-64/{brief.stem}.conda").exists()
    with open_gateway(str(inside)) as gateway:
        check_channel(gateway)
    listed = json.loads(ferry("-q", "snapshot", "list", str(inside), "--json", "-").output)
    outside_list = json.loads(ferry("-q", "snapshot", "list", str(mirror), "--json", "-").output)
    for side in (listed, outside_list):  # the digest is of what each side preserved
        for figures in side["snapshots"][0]["subdirs"].values():
            del figures["repodata_sha256"]
    assert listed["snapshots"] == outside_list["snapshots"]
    assert "0 missing, 0 corrupt, 0 extra" in ferry("verify", str(inside)).output
    diffs = [
        json.loads(ferry("-q", "snapshot", "diff", str(m), "nov-1", "live", "--json", "-").output)
        for m in (mirror, inside)
    ]
    assert diffs[0]["subdirs"] == diffs[1]["subdirs"] != {}

    three = ferry("export", str(mirror), str(tmp_path / "b3"))
    assert three.exit_code == 0 and "snapshot nov-1" not in three.output  # carried once
