"""Mirror exactly what a lockfile needs: pixi.lock, conda-lock.yml and @EXPLICIT,
then solve the locked environment from the mirror with rattler."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import rattler
import yaml

from conda_ferry.gateways import open_gateway
from conda_ferry.index.publish import OutputOptions, publish_subdir
from conda_ferry.mirror.lockfiles import LockfileError, read_lockfile
from tests.helpers import ferry, load, records
from tests.servers import Server
from tests.upstream import build_upstream, job_yaml

LINUX = rattler.LockPlatform("linux-64")


@pytest.fixture
def served(nginx: Server, request: pytest.FixtureRequest) -> tuple[Path, str, list[Any]]:
    """An upstream on nginx (sharded when the test's parameter says so) and what
    rattler locks of it for pngtool 1.0."""
    sharded = getattr(request, "param", False)
    root = nginx.root / f"locked-{request.node.name[-30:]}".replace("[", "-").replace("]", "")
    build_upstream(root)
    if sharded:
        with open_gateway(str(root)) as gateway:
            for subdir in ("linux-64", "noarch"):
                document = load(root / subdir / "repodata.json")
                publish_subdir(gateway, subdir, document, OutputOptions(jlap=False))
    url = f"{nginx.url}/{root.name}"
    solved = asyncio.run(
        rattler.solve(
            sources=[rattler.Channel(url)],
            specs=["pngtool ==1.0"],
            platforms=["linux-64", "noarch"],
            virtual_packages=[],
        )
    )
    return root, url, solved


def pixi_lock(path: Path, solved: list[Any]) -> Path:
    lock = rattler.LockFile([LINUX])
    for record in solved:
        lock.add_conda_package("default", LINUX, record)
    lock.to_path(path)
    return path


def conda_lock(path: Path, solved: list[Any]) -> Path:
    package = [
        {
            "name": r.name.normalized,
            "version": str(r.version),
            "manager": "conda",
            "platform": "linux-64",
            "url": str(r.url),
            "hash": {"md5": r.md5.hex(), "sha256": r.sha256.hex()},
            "dependencies": {},
        }
        for r in solved
    ]
    package.append({"name": "six", "manager": "pip", "url": "https://pypi.org/six.whl"})
    path.write_text(yaml.safe_dump({"version": 1, "metadata": {}, "package": package}))
    return path


def explicit(path: Path, solved: list[Any], digest: str = "md5") -> Path:
    lines = ["# platform: linux-64", "@EXPLICIT"]
    for r in solved:
        suffix = r.md5.hex() if digest == "md5" else f"sha256:{r.sha256.hex()}"
        lines.append(f"{r.url}#{suffix}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "served,form",
    [(False, "pixi"), (False, "conda-lock"), (False, "explicit-md5"), (True, "explicit-sha256")],
    indirect=["served"],
)
def test_the_mirror_holds_exactly_the_locked_packages(
    served: tuple[Path, str, list[Any]], form: str, tmp_path: Path
) -> None:
    root, url, solved = served
    locks = tmp_path / "locks"
    locks.mkdir()
    if form == "pixi":
        lock = pixi_lock(locks / "pixi.lock", solved)
    elif form == "conda-lock":
        lock = conda_lock(locks / "conda-lock.yml", solved)
    else:
        lock = explicit(locks / "env.txt", solved, form.split("-")[1])
    mirror = tmp_path / "mirror"
    relative = f"filters: {{lockfiles: [locks/{lock.name}]}}\n"  # relative to the job file
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror), relative)
    result = ferry("sync", str(job), "--json", str(tmp_path / "report.json"))
    assert result.exit_code == 0, result.output
    mirrored = {f for s in ("linux-64", "noarch") for f in records(mirror / s / "repodata.json")}
    assert mirrored == {r.file_name for r in solved}
    report = json.loads((tmp_path / "report.json").read_text())
    if form == "explicit-sha256":
        assert {s["repodata"]["via"] for s in report["subdirs"]} == {"repodata_shards.msgpack.zst"}
    for subdir in ("linux-64", "noarch"):
        upstream = records(root / subdir / "repodata.json")
        assert all(r == upstream[f] for f, r in records(mirror / subdir / "repodata.json").items())
    specs = [f"{r.name.normalized} =={r.version} {r.build}" for r in solved]
    again = asyncio.run(
        rattler.solve(
            sources=[rattler.Channel(str(mirror))],
            specs=specs,
            platforms=["linux-64", "noarch"],
            virtual_packages=[],
        )
    )
    assert sorted(r.file_name for r in again) == sorted(r.file_name for r in solved)


def test_a_lock_upstream_contradicts_is_refused_and_named(nginx: Server, tmp_path: Path) -> None:
    root = nginx.root / f"locked-bad-{tmp_path.name[-16:]}"
    build_upstream(root)
    url = f"{nginx.url}/{root.name}"
    zlib = records(root / "linux-64/repodata.json")["zlib-1.3.1-h0_0.conda"]
    lock = tmp_path / "env.txt"
    lock.write_text(
        "@EXPLICIT\n"
        f"{url}/linux-64/zlib-1.3.1-h0_0.conda#{'0' * 32}\n"  # not upstream's md5
        f"{url}/linux-64/ghost-1.0-0.conda#{zlib['md5']}\n"  # not upstream's at all
        f"{url}/linux-64/libpng-1.6.43-h1_0.conda\n"
        f"https://elsewhere.example/other/linux-64/x-1.0-0.conda#{zlib['md5']}\n"
    )
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror), f"filters: {{lockfiles: [{lock}]}}\n")
    result = ferry("sync", str(job))
    assert result.exit_code == 3, result.output
    assert "zlib-1.3.1-h0_0.conda (locked in env.txt): its md5 is not upstream's" in result.output
    assert "ghost-1.0-0.conda (locked in env.txt): upstream has no record" in result.output
    assert "x-1.0-0.conda" not in result.output  # another channel's lock: not ours
    assert set(records(mirror / "linux-64/repodata.json")) == {"libpng-1.6.43-h1_0.conda"}


def test_an_unreadable_lockfile_is_one_line_naming_it(tmp_path: Path) -> None:
    lock = tmp_path / "pixi.lock"
    lock.write_text("just: [text\n")
    job = job_yaml(tmp_path / "job.yaml", str(tmp_path), str(tmp_path / "m"), "")
    job.write_text(job.read_text() + "filters: {lockfiles: [pixi.lock, missing.lock]}\n")
    result = ferry("sync", str(job))
    assert result.exit_code == 2
    assert f"{lock}: neither @EXPLICIT nor valid YAML (line 2)" in result.output
    assert "missing.lock: no such file" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("package: zlib", "'package' is not a list"),
        ("package: [{url: 'https://c/linux-64/z-1-0.conda', hash: x}]", "is not a mapping"),
    ],
)
def test_a_conda_lock_of_the_wrong_shape_is_refused_by_name(
    tmp_path: Path, body: str, why: str
) -> None:
    """Found by the lockfiles fuzzer: a conda-lock.yml whose parts are of the wrong
    type is a LockfileError, never a traceback."""
    lock = tmp_path / "conda-lock.yml"
    lock.write_text(f"metadata: {{}}\n{body}\n")
    with pytest.raises(LockfileError, match=why):
        read_lockfile(lock)
