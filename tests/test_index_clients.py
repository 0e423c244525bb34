"""Real clients read what the indexer writes, served by nginx; other gateways index too."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import hypothesis.strategies as st
import jsonpatch
import pytest
import rattler
from hypothesis import given, settings

from conda_ferry.index import jlap
from conda_ferry.index.channel import IndexOptions, index_channel
from tests.conftest import Area, make_area
from tests.helpers import ferry, load, small_channel
from tests.servers import Server, access_log


def requests_for(server: Server, prefix: str) -> list[str]:
    lines = access_log(server)
    return [line.split('"')[1].split()[1] for line in lines if f" {prefix}" in line]


def solve(url: str, specs: list[str], cache: Path, **config: bool) -> list[rattler.RepoDataRecord]:
    gateway = rattler.Gateway(cache_dir=cache, default_config=rattler.SourceConfig(**config))
    return asyncio.run(
        rattler.solve(
            sources=[rattler.Channel(url)],
            specs=specs,
            gateway=gateway,
            platforms=["linux-64", "noarch"],
            virtual_packages=[],
        )
    )


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"zstd_enabled": False, "bz2_enabled": False, "sharded_enabled": False}, "/repodata.json"),
        ({"zstd_enabled": True, "sharded_enabled": False}, "/repodata.json.zst"),
        ({"sharded_enabled": True}, "/repodata_shards.msgpack.zst"),
    ],
)
def test_rattler_solves_and_installs_from_the_index(
    nginx: Server, tmp_path: Path, config: dict[str, bool], expected: str
) -> None:
    name = f"ch-{len(expected)}"
    channel = nginx.root / name
    small_channel(channel)
    assert ferry("index", str(channel)).exit_code == 0
    records = solve(f"{nginx.url}/{name}", ["pyutil"], tmp_path / "rattler", **config)
    assert sorted((r.name.normalized, str(r.version)) for r in records) == [
        ("app", "2.0"),
        ("libzed", "1.1"),
        ("pyutil", "0.5"),
    ]
    fetched = requests_for(nginx, f"/{name}/linux-64/")
    assert any(path.endswith(expected) for path in fetched), fetched
    prefix = tmp_path / "env"
    asyncio.run(rattler.install(records, prefix, cache_dir=tmp_path / "pkgs", show_progress=False))
    assert (prefix / "share/libzed/README").read_text() == "libzed-1.1-h0_0\n"


@pytest.mark.parametrize("kind", ["s3", "sftp", "ftp"])
def test_index_over_remote_gateways(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    area: Area = make_area(kind, request, tmp_path)
    local = tmp_path / "src"
    for path in small_channel(local):
        area.seed(str(path.relative_to(local)), path.read_bytes())
    with area.gateway() as gateway:
        summary = index_channel(gateway, IndexOptions(jobs=4))
        assert summary.as_dict()["read"] == 4
        again = index_channel(gateway, IndexOptions(jobs=4))
        assert again.as_dict()["read"] == 0 and again.as_dict()["written"] == []
    ferry("index", str(local))
    for subdir in ("linux-64", "noarch"):
        remote = json.loads(area.peek(f"{subdir}/repodata.json") or b"{}")
        assert remote == load(local / subdir / "repodata.json")


def test_cli_index_over_sftp(sshd: Server, tmp_path: Path) -> None:
    channel = sshd.root / "cli-channel"
    small_channel(channel)
    result = ferry(
        "index",
        f"{sshd.url}/cli-channel",
        "--key-file",
        sshd.extra["key_file"],
        "--known-hosts",
        sshd.extra["known_hosts"],
    )
    assert result.exit_code == 0, result.output
    assert (channel / "linux-64/repodata.json.zst").exists()


def test_index_refuses_read_only_urls(nginx: Server) -> None:
    result = ferry("index", nginx.url)
    assert result.exit_code == 2 and "read-only" in result.output


records = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b/c", "d~e"]),
        "version": st.text("0123456789.", min_size=1, max_size=4),
        "depends": st.lists(st.text("abc >=1", max_size=6), max_size=3),
    }
)
sections = st.dictionaries(st.text("abcxyz-_.~/", min_size=1, max_size=8), records, max_size=8)
documents = st.fixed_dictionaries(
    {
        "info": st.fixed_dictionaries({"subdir": st.sampled_from(["noarch", "linux-64"])}),
        "packages": sections,
        "packages.conda": sections,
        "removed": st.lists(st.text("xyz", max_size=3), max_size=3),
    }
)


@settings(max_examples=300, deadline=None)
@given(documents, documents)
def test_keyed_diff_is_a_valid_rfc6902_patch(
    old: dict[str, object], new: dict[str, object]
) -> None:
    ops = jlap.diff(old, new)
    assert jsonpatch.apply_patch(old, ops) == new


def test_old_rattler_follows_jlap(nginx: Server, tmp_path: Path) -> None:
    """py-rattler 0.22.0 (its own venv) updates through repodata.jlap with a ranged GET."""
    from tests.oldrattler import old_fetch, old_rattler_python

    python = old_rattler_python()
    name = "jlap-channel"
    channel = nginx.root / name
    small_channel(channel)
    assert ferry("index", str(channel)).exit_code == 0
    cache = tmp_path / "cache-old"

    def fetch() -> dict[str, object]:
        return old_fetch(python, f"{nginx.url}/{name}", cache)

    first = fetch()
    assert first["names"] == ["app", "libzed"]
    from tests.pkgmaker import Spec, write_package

    write_package(channel, Spec("newcomer", "3.0", "h_0", subdir="linux-64"))
    (channel / "linux-64/libzed-1.0-h0_0.conda").unlink()
    assert ferry("index", str(channel)).exit_code == 0
    before = len(access_log(nginx))
    second = fetch()
    assert second["names"] == ["app", "libzed", "newcomer"]
    served = load(channel / "linux-64/repodata.json")
    assert second["linux-64"] == sorted([*served["packages"], *served["packages.conda"]])
    log = access_log(nginx)[before:]
    jlap_requests = [line for line in log if f"/{name}/linux-64/repodata.jlap" in line]
    assert jlap_requests and all(" 206 " in line for line in jlap_requests), jlap_requests
    assert not any(
        f"/{name}/linux-64/repodata.json" in line
        for line in log
        if '"GET' in line and " 200 " in line
    )
    shutil.rmtree(cache, ignore_errors=True)
