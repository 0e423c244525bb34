"""The indexer against real packages, hostile ones and its own outputs' contracts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import zstandard

from conda_ferry.index import jlap, repodata, shards
from conda_ferry.index.package import BadPackage, read_package
from tests.clientread import read_msgpack_zst
from tests.helpers import ferry, load, small_channel
from tests.pkgmaker import Spec, package_bytes, write_package


def test_records_equal_upstream_for_real_zlib(shared: Path, tmp_path: Path) -> None:
    for subdir_dir in sorted((shared / "data/packages/conda-zlib").iterdir()):
        channel = tmp_path / subdir_dir.name
        shutil.copytree(subdir_dir, channel / subdir_dir.name)
        result = ferry("index", str(channel), "--subdir", subdir_dir.name)
        assert result.exit_code == 0, result.output
        ours = load(channel / subdir_dir.name / "repodata.json")
        upstream_file = subdir_dir / "upstream-repodata.json"
        if not upstream_file.exists():
            continue
        upstream = load(upstream_file)
        for section in ("packages", "packages.conda"):
            assert ours[section], section
            for filename, record in ours[section].items():
                assert record == upstream[section][filename], filename


def test_records_equal_reference_for_test_recipes(shared: Path, tmp_path: Path) -> None:
    source = shared / "data/packages/conda-test-recipes"
    shutil.copytree(source, tmp_path / "ch")
    result = ferry("index", str(tmp_path / "ch"))
    assert result.exit_code == 0, result.output
    for subdir in ("noarch", "linux-fake", "osx-fake", "win-fake"):
        ours = load(tmp_path / "ch" / subdir / "repodata.json")
        reference = load(source / subdir / "repodata.json")
        assert ours["packages.conda"] == reference["packages.conda"], subdir
        assert ours["info"] == {"subdir": subdir}


def test_every_shared_package_indexes(shared: Path) -> None:
    packages = [
        p for p in (shared / "data/packages").rglob("*") if p.name.endswith((".conda", ".tar.bz2"))
    ]
    assert len(packages) > 90
    for path in packages:
        with path.open("rb") as stream:
            meta = read_package(path.name, stream)
        data = path.read_bytes()
        assert meta.sha256 == hashlib.sha256(data).hexdigest()
        assert meta.md5 == hashlib.md5(data).hexdigest()
        assert meta.size == len(data)


def _hostile(tmp_path: Path) -> dict[str, bytes]:
    good = package_bytes(Spec("good", subdir="linux-64"))
    import io
    import tarfile
    import zipfile

    import zstandard

    def tar(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def conda(stem: str, info: bytes | None) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("metadata.json", b"{}")
            archive.writestr(f"pkg-{stem}.tar.zst", zstandard.compress(tar({})))
            if info is not None:
                archive.writestr(f"info-{stem}.tar.zst", zstandard.compress(info))
        return buffer.getvalue()

    import bz2

    def index_json(stem: str, **wrong: object) -> bytes:
        fields = Spec(stem.split("-")[0], subdir="linux-64").index_json()
        info = tar({"info/index.json": json.dumps({**fields, **wrong}).encode()})
        return conda(stem, info)

    corrupt = bytearray(conda("corruptinfo-1.0-0", tar({"info/index.json": b"{}" * 4000})))
    corrupt[-300:-200] = bytes(100)  # inside the info member's compressed data
    return {
        "yesterday-1.0-0.conda": index_json("yesterday-1.0-0", timestamp="yesterday"),
        "badversion-1.0-0.conda": index_json("badversion-1.0-0", version="1..x y"),
        "strdeps-1.0-0.conda": index_json("strdeps-1.0-0", depends="python"),
        "paths-1.0-0.conda": conda(
            "paths-1.0-0",
            tar(
                {
                    "info/index.json": json.dumps(Spec("paths").index_json()).encode(),
                    "info/paths.json": b'{"paths": 5}',
                }
            ),
        ),
        "corruptinfo-1.0-0.conda": bytes(corrupt),
        "empty-1.0-0.conda": b"",
        "truncated-1.0-0.conda": good[: len(good) // 2],
        "text-1.0-0.tar.bz2": b"this is not an archive",
        "noinfo-1.0-0.conda": conda("noinfo-1.0-0", None),
        "listjson-1.0-0.conda": conda("listjson-1.0-0", tar({"info/index.json": b"[1, 2]"})),
        "dotdot-1.0-0.tar.bz2": bz2.compress(tar({"info/index.json": b"{}", "../evil": b"x"})),
        "absolute-1.0-0.conda": conda("absolute-1.0-0", tar({"/etc/passwd": b"x"})),
        "bomb-1.0-0.conda": _bomb_conda(),
    }


def _bomb_conda() -> bytes:
    """A few hundred KB whose info component expands to 600 MB."""
    import io
    import tarfile
    import zipfile

    import zstandard

    header = tarfile.TarInfo("info/big")
    header.size = 600 << 20
    compressor = zstandard.ZstdCompressor().compressobj()
    parts = [compressor.compress(header.tobuf())]
    zeros = bytes(1 << 20)
    parts += [compressor.compress(zeros) for _ in range(600)]
    parts.append(compressor.flush())
    frame = b"".join(parts)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("info-bomb-1.0-0.tar.zst", frame)
    return buffer.getvalue()


def test_hostile_packages_are_skipped_and_the_rest_indexed(tmp_path: Path) -> None:
    channel = tmp_path / "ch"
    write_package(channel, Spec("good", subdir="linux-64"))
    for name, data in _hostile(tmp_path).items():
        (channel / "linux-64" / name).write_bytes(data)
    result = ferry("index", str(channel), "--json", str(tmp_path / "report.json"))
    assert result.exit_code == 3, result.output  # partial: the rest is published
    records = load(channel / "linux-64" / "repodata.json")
    assert list(records["packages.conda"]) == ["good-1.0-0.conda"]
    assert records["packages"] == {}
    report = load(tmp_path / "report.json")
    assert len(report["skipped"]) == 13
    reasons = " ".join(s["reason"] for s in report["skipped"])
    for word in (
        "empty",
        "truncated",
        "escapes",
        "not a JSON object",
        "bomb",
        "timestamp",
        "does not parse",
        "'depends'",
        "'paths'",
        "damaged",
    ):
        assert word in reasons
    assert not (tmp_path / "evil").exists() and not (channel / "evil").exists()
    again = ferry("index", str(channel))  # not stuck: the same skips, the same exit
    assert again.exit_code == 3 and "13 skipped" in again.output


def test_reindex_is_byte_identical_and_writes_nothing(tmp_path: Path) -> None:
    small_channel(tmp_path / "ch")
    assert ferry("index", str(tmp_path / "ch")).exit_code == 0
    before = {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in (tmp_path / "ch").rglob("*")
        if p.is_file()
    }
    result = ferry("index", str(tmp_path / "ch"), "--json", str(tmp_path / "r.json"))
    assert "0 files written" in result.output
    after = {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in (tmp_path / "ch").rglob("*")
        if p.is_file()
    }
    assert before == after
    assert load(tmp_path / "r.json")["read"] == 0


def test_a_lost_cache_changes_nothing(tmp_path: Path) -> None:
    small_channel(tmp_path / "ch")
    ferry("index", str(tmp_path / "ch"))
    first = (tmp_path / "ch/linux-64/repodata.json").read_bytes()
    shutil.rmtree(tmp_path / "cache")
    result = ferry("index", str(tmp_path / "ch"))
    assert "0 files written" in result.output
    assert (tmp_path / "ch/linux-64/repodata.json").read_bytes() == first


@pytest.mark.parametrize("record", [b"xx", b"5", b'{"name": 5}', None, "pages"])
def test_a_damaged_cache_changes_nothing(tmp_path: Path, record: bytes | str | None) -> None:
    """Rows that do not read back as records, or a database whose pages are damaged:
    the packages are read again and the same bytes written."""
    small_channel(tmp_path / "ch")
    ferry("index", str(tmp_path / "ch"))
    first = (tmp_path / "ch/linux-64/repodata.json").read_bytes()
    (database,) = (tmp_path / "cache").rglob("*.sqlite")
    with sqlite3.connect(database) as db:
        if record == "pages":  # found by the first query, not by opening the file
            db.execute("PRAGMA journal_mode=DELETE")
            size = database.stat().st_size
        else:
            db.execute("UPDATE packages SET record = ?", (record,))
    db.close()
    if record == "pages":
        data = bytearray(database.read_bytes())
        data[size // 2 :] = bytes(len(data) - size // 2)
        database.write_bytes(bytes(data))
    (tmp_path / "ch/linux-64/repodata.json").unlink()
    result = ferry("index", str(tmp_path / "ch"))
    assert result.exit_code == 0, result.output
    assert "0 from cache" in result.output
    assert (tmp_path / "ch/linux-64/repodata.json").read_bytes() == first


def test_a_large_repodata_compresses_the_same_on_any_machine() -> None:
    """Past a few MB zstd works in threads: the bytes must not depend on how many
    (a mirror rewrites only what changed, and two mirrors of one channel agree)."""
    data = b"".join(
        b'"p-%07d-1.0-h%08x_0.conda":{"depends":["python >=3.%d"],"size":%d},'
        % (i, i * 7919, i % 13, i * 31)
        for i in range(400_000)
    )
    packed = repodata.zst(data)
    assert packed == zstandard.ZstdCompressor(level=repodata.ZSTD_LEVEL, threads=1).compress(data)
    assert repodata.unzst(packed) == data


def test_zst_and_shards_hold_the_same_records(tmp_path: Path) -> None:
    small_channel(tmp_path / "ch")
    ferry("index", str(tmp_path / "ch"))
    sub = tmp_path / "ch/linux-64"
    plain = (sub / "repodata.json").read_bytes()
    assert repodata.unzst((sub / "repodata.json.zst").read_bytes()) == plain
    document = json.loads(plain)
    index = read_msgpack_zst((sub / shards.INDEX_NAME).read_bytes())
    assert index["version"] == 1 and index["info"]["shards_base_url"] == "./shards/"
    rebuilt: dict[str, dict[str, object]] = {"packages": {}, "packages.conda": {}}
    for name, digest in index["shards"].items():
        data = (sub / "shards" / f"{digest.hex()}.msgpack.zst").read_bytes()
        assert hashlib.sha256(data).digest() == digest
        shard = read_msgpack_zst(data)
        for section in rebuilt:
            for filename, record in shard[section].items():
                assert record["name"] == name
                record = {**record, "sha256": record["sha256"].hex(), "md5": record["md5"].hex()}
                rebuilt[section][filename] = record
    assert rebuilt == {k: document[k] for k in rebuilt}


def test_unchanged_names_keep_their_shard_and_stale_shards_go_after_the_grace(
    tmp_path: Path,
) -> None:
    small_channel(tmp_path / "ch")
    ferry("index", str(tmp_path / "ch"))
    sub = tmp_path / "ch/linux-64"
    before = set(os.listdir(sub / "shards"))
    write_package(tmp_path / "ch", Spec("libzed", "1.2", "h0_0", subdir="linux-64"))
    ferry("index", str(tmp_path / "ch"))
    after = set(os.listdir(sub / "shards"))
    assert before <= after and len(after) == 3  # libzed's old shard stays for its grace
    index = read_msgpack_zst((sub / shards.INDEX_NAME).read_bytes())
    referenced = {f"{d.hex()}.msgpack.zst" for d in index["shards"].values()}
    assert len(before & referenced) == 1  # app's shard stayed, libzed's was replaced
    assert ferry("gc", str(tmp_path / "ch"), "--now").exit_code == 0
    assert set(os.listdir(sub / "shards")) == referenced


def test_jlap_chain_appends_and_patches_apply(tmp_path: Path) -> None:
    channel = tmp_path / "ch"
    small_channel(channel)
    ferry("index", str(channel))
    sub = channel / "linux-64"
    first_json = (sub / "repodata.json").read_bytes()
    first_log = (sub / "repodata.jlap").read_bytes()
    lines = first_log.split(b"\n")
    assert lines[0] == b"0" * 64 and len(lines) == 3
    assert json.loads(lines[1]) == {"latest": jlap.blake(first_json), "url": "repodata.json"}

    write_package(channel, Spec("newpkg", subdir="linux-64"))
    (sub / "libzed-1.0-h0_0.conda").unlink()
    ferry("index", str(channel))
    second_json = (sub / "repodata.json").read_bytes()
    second_log = (sub / "repodata.jlap").read_bytes()
    footer_offset = len(first_log) - len(lines[-1]) - len(lines[-2]) - 1
    assert second_log[:footer_offset] == first_log[:footer_offset]  # only appended
    parsed = jlap.Jlap.parse(second_log)
    patch = json.loads(parsed.patches[-1])
    assert patch["from"] == jlap.blake(first_json) and patch["to"] == jlap.blake(second_json)
    applied = jsonpatch.apply_patch(json.loads(first_json), patch["patch"])
    assert applied == json.loads(second_json)

    ferry("index", str(channel))  # nothing changed: no new line
    assert (sub / "repodata.jlap").read_bytes() == second_log


def test_jlap_trims_and_still_verifies() -> None:
    log = jlap.Jlap()
    for i in range(200):
        log.append(f"{i:064x}", f"{i + 1:064x}", [{"op": "add", "path": f"/x{i}", "value": i}])
    log.trim(4096)
    data = log.render(f"{200:064x}")
    assert len(data) <= 4096
    assert json.loads(jlap.Jlap.parse(data).patches[-1])["to"] == f"{200:064x}"
    assert not log.append(
        "a" * 64, "b" * 64, [{"op": "add", "path": "/y", "value": "z" * 9000}], max_patch_bytes=4096
    )


def test_patch_instructions_and_patch_package(shared: Path, tmp_path: Path) -> None:
    channel = tmp_path / "ch"
    small_channel(channel)
    patch = {
        "packages": {"app-2.0-h1_0.tar.bz2": {"depends": ["libzed >=1.1,<2"]}},
        "packages.conda": {"libzed-1.1-h0_0.conda": {"license": None}},
        "remove": ["libzed-1.0-h0_0.conda"],
    }
    (tmp_path / "patch.json").write_text(json.dumps(patch))
    result = ferry("index", str(channel), "--patch-instructions", str(tmp_path / "patch.json"))
    assert result.exit_code == 0, result.output
    out = load(channel / "linux-64/repodata.json")
    assert out["packages"]["app-2.0-h1_0.tar.bz2"]["depends"] == ["libzed >=1.1,<2"]
    assert "license" not in out["packages.conda"]["libzed-1.1-h0_0.conda"]
    assert "libzed-1.0-h0_0.conda" not in out["packages.conda"]
    assert out["removed"] == ["libzed-1.0-h0_0.conda"]
    unpatched = load(channel / "linux-64/repodata_from_packages.json")
    assert "libzed-1.0-h0_0.conda" in unpatched["packages.conda"]

    archives = shared / "data/packages/conda-index-archives"
    real = tmp_path / "real"
    (real / "linux-64").mkdir(parents=True)
    pkg = archives / "conda-forge-repodata-patches-20180828-0.tar.bz2"
    result = ferry("index", str(real), "--patch-package", str(pkg))
    assert result.exit_code == 0, result.output
    bad = ferry("index", str(real), "--patch-package", str(archives / "nano-2.4.1-0.tar.bz2"))
    assert bad.exit_code == 2 and "patch_instructions.json" in bad.output


def test_patch_vectors(shared: Path) -> None:
    from conda_ferry.index.patches import apply

    base = shared / "data/patches"
    document = load(base / "repodata_from_packages.json")
    one = apply(document, load(base / "patch_instructions.json"))
    tar = one["packages"]["cross-python_emscripten-32-3.10.1-h60d57d3_8.tar.bz2"]
    assert tar["license"] == "WOLF LICENSE" and "curl >5.0" in tar["constrains"]
    conda = one["packages.conda"]["cross-python_emscripten-32-3.10.1-h60d57d3_8.conda"]
    assert conda["license"] == "WOLF LICENSE"  # a .tar.bz2 fix reaches its .conda twin
    assert (
        one["packages.conda"]["cross-python_emscripten-32-3.12.1-h60d57d3_8.conda"]["license"]
        == "WOLF LICENSE II"
    )
    two = apply(document, load(base / "patch_instructions_2.json"))
    assert two["packages"] == {}
    assert "cross-python_emscripten-32-3.10.1-h60d57d3_8.conda" in two["removed"]
    three = apply(document, load(base / "patch_instructions_3.json"))
    assert "i-dont-exist-23.12-hrhh2.conda" not in three["removed"]
    four = apply(document, load(base / "patch_instructions_4.json"))
    assert four["packages"]["cross-python_emscripten-32-3.10.1-h60d57d3_8.tar.bz2"]["purls"]
    five = apply(
        load(base / "repodata_from_packages_5.json"), load(base / "patch_instructions_5.json")
    )
    assert (
        "track_features"
        not in five["packages.conda"]["pytorch-cpu-2.6.0-cpu_mkl_h8b52ce0_104.conda"]
    )


def test_channeldata_and_run_exports(tmp_path: Path) -> None:
    small_channel(tmp_path / "ch")
    ferry("index", str(tmp_path / "ch"))
    data = load(tmp_path / "ch/channeldata.json")
    assert data["subdirs"] == ["linux-64", "noarch"]
    libzed = data["packages"]["libzed"]
    assert libzed["version"] == "1.1" and libzed["subdirs"] == ["linux-64"]
    assert libzed["run_exports"] == {"1.0": {"weak": ["libzed >=1.0"]}}
    exports = load(tmp_path / "ch/linux-64/run_exports.json")
    assert exports["packages.conda"]["libzed-1.0-h0_0.conda"] == {
        "run_exports": {"weak": ["libzed >=1.0"]}
    }


def test_channeldata_flags_are_true_when_any_build_has_them(tmp_path: Path) -> None:
    """A script or an activation file in one build marks its name, whichever build
    is newest; names without any keep every flag false."""
    ch = tmp_path / "ch"
    write_package(ch, Spec("hooked", "1.0", files={"bin/.hooked-post-link.sh": b"true\n"}))
    write_package(ch, Spec("hooked", "2.0", files={"etc/conda/activate.d/x.sh": b"true\n"}))
    write_package(ch, Spec("plain", "1.0", files={"lib/plain.txt": b"x"}))
    assert ferry("index", str(ch)).exit_code == 0
    packages = load(ch / "channeldata.json")["packages"]
    flags = ("activate.d", "deactivate.d", "post_link", "pre_link", "pre_unlink")
    assert {f for f in flags if packages["hooked"][f]} == {"post_link", "activate.d"}
    assert not any(packages["plain"][f] for f in (*flags, "binary_prefix", "text_prefix"))


def test_bad_package_raises_clear_reason() -> None:
    import io

    with pytest.raises(BadPackage, match=r"not a \.conda or \.tar\.bz2"):
        read_package("x.zip", io.BytesIO(b"PK"))


def test_optional_outputs_bz2_and_current(tmp_path: Path) -> None:
    import bz2

    small_channel(tmp_path / "ch")
    result = ferry(
        "index", str(tmp_path / "ch"), "--bz2", "--current-repodata", "--no-jlap", "--no-shards"
    )
    assert result.exit_code == 0, result.output
    sub = tmp_path / "ch/linux-64"
    assert (
        bz2.decompress((sub / "repodata.json.bz2").read_bytes())
        == (sub / "repodata.json").read_bytes()
    )
    current = load(sub / "current_repodata.json")
    assert list(current["packages.conda"]) == ["libzed-1.1-h0_0.conda"]  # newest libzed only
    assert "app-2.0-h1_0.tar.bz2" in current["packages"]
    assert not (sub / "repodata.jlap").exists() and not (sub / "shards").exists()


def test_a_log_left_behind_by_a_killed_run_restarts_instead_of_lying() -> None:
    def doc(names: list[str]) -> dict[str, Any]:
        return repodata.build("noarch", {}, {n: {"name": n, "size": 1} for n in names})

    docs = [doc(["a", "b", "c", "d"][:n]) for n in range(1, 5)]
    raw = [repodata.dumps(d) for d in docs]
    log = jlap.update(None, None, raw[0])
    log = jlap.update(log, raw[0], raw[1])
    # killed after repodata.json became docs[2], before the log learnt of it:
    after = jlap.Jlap.parse(jlap.update(log, raw[2], raw[3]))
    assert after.latest == jlap.blake(raw[3])
    steps = [json.loads(line) for line in after.patches]
    assert [(s["from"], s["to"]) for s in steps] == [(jlap.blake(raw[2]), jlap.blake(raw[3]))]


@pytest.mark.parametrize(
    "damaged", [b"\xff\xfe\n{}\nx", b"a" * 200 + b"\n{}\nx", b"", b"0" * 64 + b"\n\xff\n\xff"]
)
def test_a_damaged_log_on_the_target_starts_afresh(damaged: bytes) -> None:
    new = repodata.dumps(repodata.build("noarch", {}, {"a": {"name": "a", "size": 1}}))
    log = jlap.Jlap.parse(jlap.update(damaged, b"{}", new))
    assert log.iv == jlap.ZERO_IV and log.latest == jlap.blake(new)


def test_outputs_switched_off_are_removed_after_the_new_repodata(tmp_path: Path) -> None:
    small_channel(tmp_path / "ch")
    assert ferry("index", str(tmp_path / "ch"), "--bz2", "--current-repodata").exit_code == 0
    sub = tmp_path / "ch/linux-64"
    names = ("repodata.json.zst", "repodata.json.bz2", "repodata.jlap", "current_repodata.json")
    assert all((sub / n).exists() for n in (*names, shards.INDEX_NAME))
    off = ferry("index", str(tmp_path / "ch"), "--no-zst", "--no-jlap", "--no-shards")
    assert off.exit_code == 0, off.stderr
    assert not any((sub / n).exists() for n in (*names, shards.INDEX_NAME))
    assert (sub / "repodata.json").exists()
    assert ferry("gc", str(tmp_path / "ch"), "--now").exit_code == 0
    assert not list((sub / "shards").glob("*.msgpack.zst"))
