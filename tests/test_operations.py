"""What a mirror admin leans on: custom channels that never change a file silently,
file names that work from the current directory."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from conda_ferry.gateways.streams import RateCap
from conda_ferry.mirror.units import human_age, utc
from tests.helpers import ferry, load
from tests.pkgmaker import Spec, package_bytes
from tests.upstream import build_upstream, edit_repodata, job_yaml, reindex


def test_a_bare_file_name_works_wherever_a_file_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("pkg-1.0-0.conda").write_bytes(package_bytes(Spec("pkg")))
    Path("pi.json").write_text('{"patch_instructions_version": 1, "packages": {}}')
    assert ferry("publish", "pkg-1.0-0.conda", "--to", "ch").exit_code == 0
    assert ferry("cp", "pkg-1.0-0.conda", "out/").exit_code == 0
    assert ferry("cp", "pkg-1.0-0.conda", "copy.conda").exit_code == 0
    assert ferry("index", "ch", "--patch-instructions", "pi.json").exit_code == 0
    assert ferry("verify", "ch", "--json", "report.json").exit_code == 0
    assert all(os.path.exists(p) for p in ("ch/noarch/pkg-1.0-0.conda", "out", "report.json"))


def test_publish_never_silently_replaces_a_package(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "pkg-1.0-0.conda", tmp_path / "b" / "pkg-1.0-0.conda"
    for path, payload in ((first, b"one"), (second, b"two")):
        path.parent.mkdir()
        path.write_bytes(package_bytes(Spec("pkg", files={"f": payload})))
    channel = str(tmp_path / "ch")
    assert ferry("publish", str(first), "--to", channel).exit_code == 0
    assert ferry("publish", str(first), "--to", channel).exit_code == 0  # same bytes: fine
    refused = ferry("publish", str(second), "--to", channel)
    assert refused.exit_code == 1 and "--force" in refused.stderr
    assert (tmp_path / "ch/noarch/pkg-1.0-0.conda").read_bytes() == first.read_bytes()
    assert ferry("publish", str(second), "--to", channel, "--force").exit_code == 0
    assert (tmp_path / "ch/noarch/pkg-1.0-0.conda").read_bytes() == second.read_bytes()


def test_publish_refuses_a_name_the_mirror_holds_from_upstream(tmp_path: Path) -> None:
    build_upstream(tmp_path / "up")
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "j.yaml", str(tmp_path / "up"), str(mirror))
    assert ferry("sync", str(job)).exit_code == 0
    impostor = tmp_path / "zlib-1.3.1-h0_0.conda"
    impostor.write_bytes(package_bytes(Spec("zlib", "1.3.1", "h0_0", subdir="linux-64")))
    refused = ferry("publish", str(impostor), "--to", str(mirror), "--force")
    assert refused.exit_code == 1 and "holds this package from upstream" in refused.stderr


def test_include_specs_that_match_nothing_are_named(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = upstream

    def ghost(document: dict[str, Any]) -> None:
        document["packages.conda"]["zlib-1.3.1-h0_0.conda"]["depends"] = ["ghost >=1"]

    edit_repodata(root, "linux-64", ghost)
    filters = 'filters: {include: [zlib, "nosuchpkg >=1"], dependencies: true}\n'
    job = job_yaml(tmp_path / "job.yaml", url, str(tmp_path / "mirror"), filters)
    report = tmp_path / "r.json"
    result = ferry("sync", str(job), "--json", str(report))
    assert result.exit_code == 0, result.stderr
    assert "include matches no upstream record: 'nosuchpkg >=1'" in result.stderr
    assert "'ghost >=1' (needed by linux-64/zlib-1.3.1-h0_0.conda)" in result.stderr
    assert load(report)["unmatched_includes"] == ["nosuchpkg >=1"]
    job.write_text(job.read_text() + "strict: true\n")
    strict = ferry("sync", str(job))
    assert strict.exit_code == 2 and "nosuchpkg >=1" in strict.stderr


def test_an_audit_line_per_run_and_subdir_says_what_appeared_and_went(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = upstream
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", url, str(mirror), "prune: true\n")
    assert ferry("sync", str(job)).exit_code == 0
    assert ferry("sync", str(job)).exit_code == 0  # nothing changed: no line
    (root / "linux-64" / "gpltool-1.0-h3_0.conda").unlink()
    reindex(root)
    assert ferry("sync", str(job)).exit_code == 0
    (log,) = (mirror / ".ferry" / "audit").glob("linux-64-*.jsonl")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2
    assert "zlib-1.3.1-h0_0.conda" in lines[0]["added"] and lines[0]["removed"] == []
    assert lines[1]["removed"] == ["gpltool-1.0-h3_0.conda"] and lines[1]["time"].endswith("Z")


def _samples(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_keep_the_last_success_across_a_failed_run(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = upstream
    metrics = tmp_path / "ferry.prom"
    job = job_yaml(tmp_path / "nightly.yaml", url, str(tmp_path / "mirror"))
    assert ferry("sync", str(job), "--metrics", str(metrics)).exit_code == 0
    good = _samples(metrics)
    success = 'ferry_last_success_timestamp_seconds{job="nightly",subdir="linux-64"}'
    assert good['ferry_last_exit_code{job="nightly"}'] == 0
    assert good['ferry_records_published{job="nightly",subdir="linux-64"}'] > 0
    assert good['ferry_packages_transferred{job="nightly",subdir="noarch"}'] > 0
    assert good['ferry_upstream_age_seconds{job="nightly",subdir="linux-64"}'] >= 0
    assert "# TYPE ferry_last_exit_code gauge" in metrics.read_text()

    job.write_text(job.read_text().replace(url, url + "-gone"))
    assert ferry("sync", str(job), "--metrics", str(metrics)).exit_code == 1
    bad = _samples(metrics)
    assert bad['ferry_last_exit_code{job="nightly"}'] == 1
    assert bad[success] == good[success]  # kept: monitoring sees how long it has failed
    assert bad['ferry_last_run_timestamp_seconds{job="nightly"}'] >= good[success]


def test_metrics_name_any_job_file_once_in_utf_8(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    """A job file's name with a quote, a backslash and a byte that is not text: its
    label is written escaped, read back as it was (a second run replaces its series,
    not adds to them), and the file is UTF-8 as Prometheus reads it."""
    _, url = upstream
    metrics = tmp_path / "ferry.prom"
    job = job_yaml(tmp_path / os.fsdecode(b'n"i\\g\xfft.yaml'), url, str(tmp_path / "mirror"))
    for _ in range(2):
        assert ferry("sync", str(job), "--metrics", str(metrics)).exit_code == 0
    text = metrics.read_bytes().decode()  # strict: UTF-8
    label = 'job="n\\"i\\\\g\\\\udcfft"'
    runs = [line for line in text.splitlines() if line.startswith("ferry_last_exit_code")]
    assert runs == [f"ferry_last_exit_code{{{label}}} 0"]


def test_too_little_free_space_is_one_line_and_nothing_written(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conda_ferry.gateways import localfs

    monkeypatch.setattr(localfs, "_free_bytes", lambda path: 1000)  # the OS's answer, shrunk
    mirror = tmp_path / "mirror"
    result = ferry("sync", str(job_yaml(tmp_path / "job.yaml", upstream[1], str(mirror))))
    assert result.exit_code == 1
    line = next(line for line in result.stderr.splitlines() if "to add but" in line)
    assert "1000 B free" in line and "KiB to add" in line
    assert not list(mirror.rglob("*.conda"))


def test_a_rate_cap_spaces_reads_by_their_size() -> None:
    clock = [0.0]
    waits: list[float] = []
    cap = RateCap(1000.0, clock=lambda: clock[0], sleep=waits.append)
    cap.take(500)  # the first chunk goes at once
    cap.take(500)  # the next waits its turn: 0.5 s at 1000 B/s
    clock[0] = 2.0
    cap.take(100)  # after a pause, no debt
    assert waits == [0.5]


def test_a_quiet_night_still_deletes_what_is_due(synced: tuple[Path, Path, Path]) -> None:
    root, mirror, job = synced
    job.write_text(job.read_text() + "prune: true\ngrace: 1s\n")
    (root / "linux-64" / "gpltool-1.0-h3_0.conda").unlink()
    reindex(root)
    assert ferry("sync", str(job)).exit_code == 0
    assert (mirror / "linux-64" / "gpltool-1.0-h3_0.conda").exists()  # in its grace
    time.sleep(1.1)
    quiet = ferry("sync", str(job))  # upstream unchanged: one request per subdir
    assert quiet.exit_code == 0 and "up to date" in quiet.stderr
    assert not (mirror / "linux-64" / "gpltool-1.0-h3_0.conda").exists()


def test_status_of_a_fresh_a_failed_and_a_stale_mirror(
    synced: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, mirror, job = synced
    report = tmp_path / "status.json"
    fresh = ferry("status", str(mirror), "--max-age", "1h", "--json", str(report))
    assert fresh.exit_code == 0, fresh.stderr
    rows = {row["subdir"]: row for row in load(report)["subdirs"]}
    assert rows["linux-64"]["records"] == 6 and rows["linux-64"]["last_run"]["result"] == "synced"
    assert rows["linux-64"]["lock"] is None and rows["linux-64"]["age_seconds"] <= 60

    job.write_text(job.read_text() + "prune: true\nfilters: {include: [nosuch]}\n")
    assert ferry("sync", str(job)).exit_code == 1  # the prune guard refuses
    failed = ferry("status", str(mirror), "--json", str(report))
    assert failed.exit_code == 1 and "the last run failed" in failed.stderr
    assert load(report)["subdirs"][0]["last_run"]["result"] == "failed"

    time.sleep(1.1)
    stale = ferry("status", str(mirror), "--subdir", "noarch", "--max-age", "1s")
    assert stale.exit_code == 1, stale.stderr
    assert re.search(
        r"^noarch: the last run is \d+ s old, more than --max-age 1 s$", stale.stderr, re.M
    )


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0, "0 s"), (59.4, "59 s"), (61, "1 min"), (3660, "1 h 1 min"), (187_259, "2 d 4 h")],
)
def test_ages_read_in_their_two_largest_units(seconds: float, said: str) -> None:
    assert human_age(seconds) == said


def test_a_quiet_night_counts_as_a_run(synced: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Monitoring asks whether the sync ran, not whether upstream changed; and the
    state file an earlier quiet night was killed writing is swept."""
    _, mirror, job = synced
    for subdir in ("linux-64", "noarch"):  # the last run that did work: two days ago
        state = mirror / f".ferry/{subdir}.json"
        recorded = load(state)
        recorded["last_run"]["finished"] = utc(time.time() - 2 * 86400)
        state.write_text(json.dumps(recorded))
    report = tmp_path / "status.json"
    assert ferry("status", str(mirror), "--max-age", "1d").exit_code == 1
    leftover = mirror / ".ferry/.linux-64.json.41b8f3792704.part"
    leftover.write_text("{")
    assert ferry("sync", str(job)).exit_code == 0  # up to date
    assert not leftover.exists()
    quiet = ferry("status", str(mirror), "--max-age", "1d", "--json", str(report))
    assert quiet.exit_code == 0, quiet.stderr
    row = load(report)["subdirs"][0]
    assert row["checked"] and row["last_run"]["result"] == "synced"
    assert isinstance(row["lag_seconds"], int)  # upstream's change to the mirror's repodata
