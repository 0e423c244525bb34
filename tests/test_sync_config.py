"""Job configs: every mistake is one line naming file, line and fix; exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conda_ferry.mirror import yamlread
from conda_ferry.mirror.config import load_job, parse_size
from conda_ferry.mirror.filters import SizeRule
from tests.helpers import ferry


def run(tmp_path: Path, text: str) -> tuple[int, str]:
    job = tmp_path / "job.yaml"
    job.write_text(text)
    result = ferry("sync", str(job))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "text,line,words",
    [
        ("source: a\ntarget: b\nsubdirs: [noarch]\nfliters: {}\n", 4, "did you mean 'filters'"),
        ("source: a\nsubdirs: [noarch]\n", 1, "target: is required"),
        (
            "source: a\ntarget: b\nsubdirs: [noarch]\nfilters:\n  include: ['numpy >=>1']\n",
            5,
            "is not a match spec",
        ),
        (
            "source: a\ntarget: b\nsubdirs: [noarch]\nfilters:\n  max_size: huge\n",
            5,
            "is not a size",
        ),
        ("source: a\ntarget: b\nsubdirs: [noarch]\nfilters:\n  latest: 0\n", 5, ">= 1"),
        ("source: a\ntarget: b\nsubdirs: [noarch]\nfilters:\n  after: someday\n", 5, "YYYY-MM-DD"),
        ("source: a\ntarget: b\nsubdirs: [Linux 64]\n", 3, "not a subdir name"),
        (
            "source: ftp://u:${NO_SUCH_VAR_X}@h/x\ntarget: b\nsubdirs: [noarch]\n",
            1,
            "NO_SUCH_VAR_X is not set",
        ),
        ("source: a\ntarget: b\nsubdirs: [noarch]\nprune: yes please\n", 4, "true or false"),
        ("source: [a\n", 2, "YAML"),
    ],
)
def test_bad_configs_name_file_line_and_fix(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    code, output = run(tmp_path, text)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert f"job.yaml:{line}:" in lines[0] and words in lines[0]
    assert "Traceback" not in output


def test_missing_job_file(tmp_path: Path) -> None:
    result = ferry("sync", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "no such file" in result.output


def test_defaults_and_env_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTP_PASSWORD", "hunter2")
    job = tmp_path / "job.yaml"
    job.write_text(
        "source: ftp://me:${FTP_PASSWORD}@host/ch\ntarget: mirror\n"
        "subdirs: [noarch]\nfilters:\n  max_size: 1.5GiB\n"
    )
    loaded = load_job(str(job))
    assert loaded.source == "ftp://me:hunter2@host/ch"
    monkeypatch.setenv("FTP_PASSWORD", "changed")  # the kept parse holds ${...}, not its value
    assert load_job(str(job)).source == "ftp://me:changed@host/ch"
    kept = list((tmp_path / "cache" / "conda-ferry" / "jobs").iterdir())
    assert len(kept) == 1 and b"hunter2" not in kept[0].read_bytes()
    assert loaded.target == str(tmp_path / "mirror")
    size_rule = loaded.filters.rule(SizeRule)
    assert size_rule is not None and size_rule.max_size == int(1.5 * 1024**3)
    assert (loaded.prune, loaded.jobs, loaded.max_prune_fraction) == (False, 4, 0.5)
    assert loaded.outputs.jlap and loaded.outputs.shards and loaded.outputs.zst


def test_parse_size() -> None:
    assert parse_size("500MB") == 500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size(1234) == 1234
    assert parse_size("lots") is None


def test_every_mistake_of_a_job_is_reported_at_once_in_line_order(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "source: https://example.org/ch\n"  # 1
        "target: https://example.org/ch\n"  # 2: the source again
        "subdirs: [linux64, noarch, noarch]\n"  # 3: a typo and a repeat
        "filters:\n"  # 4: its keys not indented
        "include: [zlib]\n"  # 5
        "jobs: 0\n"  # 6
        "prune: true\n"  # 7
        "prune: false\n"  # 8: twice
        "source_options: {key_file: /etc/hostname}\n"  # 9: sftp only
        "grace: soon\n"  # 10
    )
    result = ferry("sync", str(job))
    assert result.exit_code == 2
    lines = [line.removeprefix("ferry: error: ") for line in result.stderr.splitlines()]
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == sorted(numbers) and len(lines) >= 8, lines
    text = "\n".join(lines)
    for expected in (
        ":2: target: is the source",
        "did you mean 'linux-64'?",
        "'noarch' is listed twice",
        ":4: filters: is empty",
        ":5: include: unknown key",
        ":6: jobs: must be a whole number",
        ":8: prune: duplicate key",
        "key_file: does nothing for a https URL",
        ":10: grace: is not a duration",
    ):
        assert expected in text, (expected, text)


def test_dates_are_checked_by_the_job_reader(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("source: a\ntarget: b\nsubdirs: [noarch]\nfilters: {after: 2024-13-01}\n")
    bad = ferry("sync", str(job))
    assert bad.exit_code == 2 and ":4: filters.after: is not a date: '2024-13-01'" in bad.stderr
    job.write_text(
        "source: a\ntarget: b\nsubdirs: [noarch]\n"
        "filters: {after: 2025-01-01, before: 2024-01-01}\n"
    )
    crossed = ferry("sync", str(job))
    assert crossed.exit_code == 2 and "2024-01-01 is not after 2025-01-01" in crossed.stderr


READ_JOB = """
import json, sys
from conda_ferry.mirror.config import load_job
from conda_ferry.mirror.errors import ConfigError
try:
    said = repr(load_job(sys.argv[1]))
except ConfigError as exc:
    said = str(exc)
print(json.dumps([said, "yaml" in sys.modules]))
"""


def _read_in_a_new_process(job: Path, cache: Path) -> tuple[str, bool]:
    """What loading ``job`` gives a fresh process, and whether it imported PyYAML."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", READ_JOB, str(job)], env=env, capture_output=True, check=True
    )
    said, imported = json.loads(done.stdout)
    return said, imported


@pytest.mark.parametrize(
    "text,kept",
    [
        ("source: a\ntarget: b\nsubdirs: [noarch, linux-64]\njobs: 3\n", True),
        ("source: a\ntarget: b\nsubdirs: [noarch]\njobs: 3\njobs: 4\nprune: maybe\n", True),
        ("source: a\ntarget: b\nsubdirs: !!set {noarch: null}\n", False),  # no msgpack set
        ("source: a\ntarget: b\nmax_prune_fraction: .nan\n", False),
        ("source: a\ntarget: [b\n", False),  # not YAML: nothing to keep
    ],
)
def test_a_job_read_again_is_not_parsed_again(tmp_path: Path, text: str, kept: bool) -> None:
    """cron reads the same job file every night: its parse is kept, private to the
    user, and the next process takes it without importing PyYAML (10 ms of every
    start). The same job or the same mistakes, on the same lines, come out; what
    msgpack cannot hold as it is, a damaged kept parse or another text is parsed
    again."""
    job, cache = tmp_path / "job.yaml", tmp_path / "cache"
    job.write_text(text)
    first, imported = _read_in_a_new_process(job, cache)
    assert imported
    again, imported = _read_in_a_new_process(job, cache)
    assert again == first and imported is not kept
    found = list((cache / "conda-ferry" / "jobs").glob("*")) if kept else []
    assert len(found) == kept
    for path in found:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        kept_bytes = path.read_bytes()
        at = kept_bytes.index(b"noarch")  # still msgpack, and another job
        for damaged in (b"\xc1 damaged", kept_bytes[:at] + b"N" + kept_bytes[at + 1 :]):
            path.write_bytes(damaged)
            assert _read_in_a_new_process(job, cache) == (first, True)
    job.write_text(f"# the same job, edited\n{text}")
    edited, imported = _read_in_a_new_process(job, cache)
    assert imported and (edited, True) == _read_in_a_new_process(job, tmp_path / "fresh")


def test_kept_job_parses_are_bounded_least_recently_used_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every edit of every job keeps one more parse: past the bound, the parses least
    recently used go, and one read meanwhile stays; a killed writer's temp goes too."""
    monkeypatch.setattr(yamlread, "KEPT_FILES", 3)
    kept = tmp_path / "cache" / "conda-ferry" / "jobs"
    job = tmp_path / "job.yaml"
    for jobs in range(5):
        job.write_text(f"source: a\ntarget: b\nsubdirs: [noarch]\njobs: {jobs + 1}\n")
        load_job(str(job))
        if jobs == 0:
            first = next(kept.iterdir())
            os.utime(first, (1, 1))  # long unused
        if jobs == 2:
            os.utime(first, (2, 2))
            job.write_text("source: a\ntarget: b\nsubdirs: [noarch]\njobs: 1\n")
            load_job(str(job))  # the first, used again
        if jobs == 3:  # what a writer killed mid-write left, long ago
            left = kept / ".gone.msgpack.0123456789ab.part"
            left.write_bytes(b"half")
            os.utime(left, (1, 1))
    names = sorted(p.name for p in kept.iterdir())
    assert len(names) == 3 and first.name in names
