"""One command-line convention, walked over every command and tried as a user would."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conda_ferry.mirror import errors
from conda_ferry.mirror.cli import main
from tests.faultproxy import FaultProxy
from tests.helpers import ferry, small_channel
from tests.servers import Server, free_port
from tests.upstream import build_upstream, job_yaml

ROOT = Path(__file__).resolve().parents[1]
GENERIC_METAVARS = {"TEXT", "INTEGER", "FLOAT", "PATH", "FILENAME", "DIRECTORY", "BOOLEAN"}


def commands() -> list[tuple[str, click.Command]]:
    """Every command a user runs, a group's as "group command"."""
    found = []
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            found.extend((f"{name} {n}", c) for n, c in command.commands.items())
        else:
            found.append((name, command))
    return sorted(found)


@pytest.mark.parametrize("name,command", commands(), ids=[n for n, _ in commands()])
def test_every_command_follows_the_convention(name: str, command: click.Command) -> None:
    assert command.help, f"{name} has no help"
    options = [p for p in command.params if isinstance(p, click.Option)]
    for option in options:
        assert option.help, f"{name} {option.opts[0]} has no help text"
        if not option.is_flag and not option.count:
            metavar = option.make_metavar(click.Context(command))
            words = set(re.split(r"[^A-Z_]+", metavar))
            assert not words & GENERIC_METAVARS, f"{name} {option.opts[0]}: {metavar}"
    json_option = next((o for o in options if "--json" in o.opts), None)
    assert json_option is not None and not json_option.is_flag, f"{name} has no --json FILE"
    assert json_option.metavar == "FILE"


def test_exit_codes_are_one_table() -> None:
    help_text = ferry("--help").output
    readme = (ROOT / "README.md").read_text()
    for code, what in errors.EXIT_CODES.items():
        assert re.search(rf"\b{code}\b\s+{re.escape(what)}", help_text), (code, help_text)
        assert f"| {code} |" in readme, code


def _sync_job(tmp_path: Path) -> Path:
    build_upstream(tmp_path / "up")
    return job_yaml(tmp_path / "job.yaml", str(tmp_path / "up"), str(tmp_path / "mirror"))


def test_a_no_change_sync_prints_nothing_on_stdout(tmp_path: Path) -> None:
    job = _sync_job(tmp_path)
    first = CliRunner().invoke(main, ["sync", str(job)])
    assert first.exit_code == 0, first.output
    # one size style from the first line on stderr to the summary on stdout
    sizes = re.findall(r"\d+\.\d (?:KiB|MiB)", first.output)
    assert sizes and "MB" not in first.output and " 1 files" not in first.output
    again = CliRunner().invoke(main, ["sync", str(job)])
    assert again.exit_code == 0
    assert again.stdout == ""
    assert len(again.stderr.strip().splitlines()) <= 1 and "up to date" in again.stderr


def test_quiet_is_silent_on_success_for_every_command(tmp_path: Path) -> None:
    small_channel(tmp_path / "pkgs")
    package = next((tmp_path / "pkgs").rglob("*.conda"))
    channel, bundle = tmp_path / "channel", tmp_path / "bundle"
    job = _sync_job(tmp_path)
    runs = [
        ["sync", str(job)],
        ["index", str(tmp_path / "pkgs")],
        ["publish", str(package), "--to", str(channel)],
        ["verify", str(channel)],
        ["ls", str(channel)],
        ["cp", str(package), f"{tmp_path / 'copies'}/"],
        ["export", str(tmp_path / "mirror"), str(bundle)],
        ["bundle-info", str(bundle)],
        ["import", str(bundle), "--to", str(tmp_path / "inside")],
        ["keygen", str(tmp_path / "key")],
        ["gc", str(tmp_path / "mirror"), "--now"],
        ["status", str(tmp_path / "mirror")],
    ]
    mirror = str(tmp_path / "mirror")
    runs += [
        ["snapshot", *args]
        for args in (
            ["create", mirror, "q1"],
            ["list", mirror],
            ["show", mirror, "q1"],
            ["diff", mirror, "q1", "live"],
            ["pin", mirror, "q1"],
            ["unpin", mirror, "q1"],
            ["restore", mirror, "q1"],
            ["release", mirror],
            ["delete", mirror, "q1"],
        )
    ]
    named = {" ".join(run[:2]) if run[0] == "snapshot" else run[0] for run in runs}
    assert named == {name for name, _ in commands()}
    for args in runs:
        result = CliRunner().invoke(main, ["-q", *args])
        assert result.exit_code == 0, (args, result.output)
        assert result.output == "", (args, result.output)


def test_json_dash_writes_to_stdout_and_a_file_elsewhere(tmp_path: Path) -> None:
    small_channel(tmp_path / "ch")
    result = CliRunner().invoke(main, ["-q", "index", str(tmp_path / "ch"), "--json", "-"])
    assert json.loads(result.stdout)["packages"] == 4
    ferry("verify", str(tmp_path / "ch"), "--json", str(tmp_path / "v.json"))
    assert json.loads((tmp_path / "v.json").read_text())["checked"] == 4


def test_explain_of_an_unknown_name_is_one_line_and_exit_1(tmp_path: Path) -> None:
    job = _sync_job(tmp_path)
    result = CliRunner().invoke(main, ["sync", str(job), "--explain", "no-such-package"])
    assert result.exit_code == errors.FAILED
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no-such-package" in lines[0] and lines[0].startswith("ferry:")


def test_import_of_a_missing_directory_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["import", str(tmp_path / "nope"), "--to", str(tmp_path)])
    assert result.exit_code == errors.USAGE
    assert "no such directory" in result.output


def test_verify_of_a_published_channel_counts_its_packages_and_shards(tmp_path: Path) -> None:
    small_channel(tmp_path / "pkgs")
    package = next((tmp_path / "pkgs" / "linux-64").glob("*.conda"))
    assert ferry("publish", str(package), "--to", str(tmp_path / "ch")).exit_code == 0
    assert (tmp_path / "ch" / "noarch" / "repodata.json").is_file()  # clients need it
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "ch")])
    assert result.exit_code == 0, result.output
    assert "verified 1 package and 1 shard in 2 subdirs: 0 missing, 0 corrupt, 0 extra" in (
        result.output
    )


def test_every_command_that_opens_urls_takes_the_gateway_options() -> None:
    """A bundle on sftp:// needs --key-file as much as a target does; only keygen
    (local files) and sync (its job file holds the options) go without."""
    lacking = [n for n, c in commands() if "retries" not in {p.name for p in c.params}]
    assert lacking == ["keygen", "sync"]


def test_every_subdir_option_takes_only_a_subdir_name() -> None:
    """Refused as the command line is read, before anything is opened: ``index
    --subdir a/b`` once made a/b/ in the channel, and a value with a byte that is no
    text was an internal error."""
    taking = [n for n, c in commands() if any(p.name in ("subdir", "subdirs") for p in c.params)]
    assert len(taking) >= 6
    for name in taking:
        for value in ("a/b", "..", "x\udcff"):
            result = ferry(*name.split(), "--subdir", value)
            assert result.exit_code == errors.USAGE, (name, result.output)
            assert "is not a subdir name" in result.output, (name, result.output)


@pytest.mark.parametrize("command", [["bundle-info"], ["import", "--to", "T"]])
def test_a_bundle_is_read_with_the_gateway_options_given(
    command: list[str], tmp_path: Path
) -> None:
    proxy = FaultProxy(free_port())
    proxy.default = "drop:0"  # every connection hangs up at once
    try:
        url = f"http://127.0.0.1:{proxy.port}/bundle"
        args = [command[0], url, *command[1:], "--retries", "2", "--retry-delay", "0"]
        result = CliRunner().invoke(main, [a.replace("T", str(tmp_path / "t")) for a in args])
        assert result.exit_code == errors.FAILED, result.output
        assert proxy.connections == 2
    finally:
        proxy.close()


def test_reports_and_their_errors_never_carry_a_password(tmp_path: Path) -> None:
    """The report quotes what the user gave, which may be a URL with a password."""
    secret_url = "ftp://u:Hush@127.0.0.1:99999/x"
    result = CliRunner().invoke(main, ["sync", secret_url, "--json", "-", "--json", secret_url])
    assert result.exit_code == errors.USAGE
    assert "Hush" not in result.output
    assert "--json ftp://u:***@127.0.0.1:99999/x: cannot write" in result.output


def test_keygen_writes_both_halves_or_neither(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("someone else's")
    taken = CliRunner().invoke(main, ["keygen", str(tmp_path / "k")])
    assert taken.exit_code == errors.USAGE and "exists already" in taken.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub"]
    for bad in ("sftp://h/k", str(tmp_path / ("x" * 300)), str(tmp_path / "no" / "k")):
        result = CliRunner().invoke(main, ["keygen", bad])
        assert result.exit_code == errors.USAGE, result.output
        assert result.output.startswith("ferry: error: ") and "internal" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub"]
    assert ferry("keygen", str(tmp_path / "new")).exit_code == 0
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub", "new", "new.pub"]


@pytest.fixture
def no_aws_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_missing_credentials_are_a_configuration_error_naming_the_fix(
    moto: Server, tmp_path: Path, no_aws_credentials: None
) -> None:
    listing = CliRunner().invoke(
        main, ["ls", "s3://ferry/x", "--endpoint-url", moto.url, "--retries", "1"]
    )
    assert listing.exit_code == errors.USAGE, listing.output
    assert "--profile" in listing.output
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source: s3://ferry/x\ntarget: {tmp_path / 'm'}\nsubdirs: [noarch]\n"
        f"source_options: {{endpoint_url: '{moto.url}', retries: 1}}\n"
    )
    sync = CliRunner().invoke(main, ["sync", str(job)])
    assert sync.exit_code == errors.USAGE, sync.output
    assert "source_options.profile" in sync.output and "--profile" not in sync.output


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"AWS_PROFILE": "nope"}, "AWS profile 'nope' not found"),
        ({"AWS_CONFIG_FILE": "CONFIG"}, "cannot read the AWS configuration"),
    ],
)
def test_a_broken_aws_setup_is_a_configuration_error(
    env: dict[str, str], said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").write_text("[profile x\ngarbage")
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("CONFIG", str(tmp_path / "config")))
    url = "http://127.0.0.1:1"  # never reached: the setup fails first
    result = CliRunner().invoke(main, ["ls", "s3://ferry/x", "--endpoint-url", url])
    assert result.exit_code == errors.USAGE, result.output
    assert said in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("closed", [(1,), (2,), (0, 1, 2)], ids=["stdout", "stderr", "all"])
def test_a_sync_started_with_standard_streams_closed_runs_as_usual(
    closed: tuple[int, ...], tmp_path: Path
) -> None:
    """cron's ``>&-``: the numbers of closed streams must not go to a worker's pipe."""
    job = _sync_job(tmp_path)
    job.write_text(job.read_text() + "processes: 2\n")  # workers even for a few files

    def close_them() -> None:
        for fd in closed:
            os.close(fd)

    with open(tmp_path / "err", "wb") as err:
        run = subprocess.run(
            [sys.executable, "-m", "conda_ferry", "sync", str(job)],
            stderr=err if 2 not in closed else None,
            preexec_fn=close_them,
            timeout=120,
        )
    assert run.returncode == 0
    assert "Traceback" not in (tmp_path / "err").read_text()
    assert (tmp_path / "mirror" / "noarch" / "repodata.json").is_file()


def test_output_that_cannot_be_written_fails_the_run_after_its_work(tmp_path: Path) -> None:
    job = _sync_job(tmp_path)
    with open("/dev/full", "wb") as full:
        run = subprocess.run(
            [sys.executable, "-m", "conda_ferry", "sync", str(job)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert run.returncode == errors.FAILED, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ferry: error: standard output: cannot write: No space left")
    assert (tmp_path / "mirror" / "noarch" / "repodata.json").is_file()


def test_a_file_name_that_is_not_text_is_listed_as_its_bytes(tmp_path: Path) -> None:
    """As ls lists it, whatever the locale: a strict UTF-8 stdout (Python's under
    en_US.UTF-8) refused it, and the listing was an internal error."""
    (tmp_path / os.fsdecode(b"x\xff.txt")).write_bytes(b"hi")
    run = subprocess.run(
        [sys.executable, "-m", "conda_ferry", "ls", str(tmp_path)],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip().endswith(b"  x\xff.txt"), run.stdout


def test_a_channel_whose_path_is_not_text_is_indexed_and_served(tmp_path: Path) -> None:
    """Its index cache is keyed by the path's bytes, and its pages name it as the
    error lines do (\\udcff): each was an internal error."""
    channel = tmp_path / os.fsdecode(b"c\xff")
    small_channel(channel)
    assert ferry("index", str(channel)).exit_code == 0
    assert ferry("snapshot", "create", str(channel), "s1").exit_code == 0
    assert ferry("verify", str(channel)).exit_code == 0
    assert "conda channel c\\udcff" in (channel / "index.html").read_bytes().decode()


def test_the_version_answered_before_the_command_line_loads_is_clicks() -> None:
    """``ferry --version`` is answered before click loads; in click's words."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "conda_ferry", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout == CliRunner().invoke(main, ["--version"]).output
    loaded = {line.split("|")[-1].strip() for line in run.stderr.splitlines()}
    assert not loaded & {"click", "msgspec", "conda_ferry.mirror.cli"}


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_clicks_own_output_that_cannot_be_written_is_one_line(args: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        run = subprocess.run(
            [sys.executable, "-m", "conda_ferry", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert run.returncode == errors.FAILED
    assert run.stderr == "ferry: error: standard output: cannot write: No space left on device\n"


def test_the_process_ends_with_its_output_whole_and_its_status(tmp_path: Path) -> None:
    """The command line ends without the interpreter's teardown: what it printed
    (through a pipe, block-buffered) is all there, and its status is the run's."""
    job = _sync_job(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "conda_ferry", "-q", "sync", str(job), "--json", "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["exit_code"] == 0
    missing = subprocess.run(
        [sys.executable, "-m", "conda_ferry", "sync", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == errors.USAGE
    assert missing.stderr.startswith("ferry: error: ")


def test_the_collector_is_on_again_once_a_command_has_loaded(tmp_path: Path) -> None:
    """The console script starts with the cyclic collector off (loading the modules
    makes no garbage); every command turns it on again before its work, what the
    start made frozen: sync once its run is loaded, the others as they begin."""
    job = _sync_job(tmp_path)
    for args in (["sync", str(job)], ["status", str(tmp_path / "mirror")]):
        gc.disable()
        try:
            assert ferry("-q", *args).exit_code == 0
            assert gc.isenabled()
            assert gc.get_freeze_count() > 0
        finally:
            gc.unfreeze()
            gc.enable()


def test_the_demo_mirror_describes_its_packages(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs" / "demo-channel", tmp_path / "up")
    job = job_yaml(tmp_path / "job.yaml", str(tmp_path / "up"), str(tmp_path / "mirror"))
    assert ferry("sync", str(job)).exit_code == 0
    channeldata = json.loads((tmp_path / "mirror" / "channeldata.json").read_text())
    assert channeldata["packages"]["zlib"]["summary"]
    assert set(channeldata["packages"]) == {
        r["name"]
        for subdir in ("linux-64", "noarch")
        for r in json.loads((tmp_path / "mirror" / subdir / "repodata.json").read_text())[
            "packages.conda"
        ].values()
    } | {
        r["name"]
        for subdir in ("linux-64", "noarch")
        for r in json.loads((tmp_path / "mirror" / subdir / "repodata.json").read_text())[
            "packages"
        ].values()
    }
    run_exports = json.loads((tmp_path / "mirror" / "linux-64" / "run_exports.json").read_text())
    assert run_exports["packages.conda"] or run_exports["packages"]


@pytest.mark.parametrize("scheme", ["sftp", "ftp", "http"])
def test_a_dead_host_costs_the_retries_once_and_says_so(scheme: str) -> None:
    url = f"{scheme}://root@127.0.0.1:{free_port()}/x/"
    flags = ["--retries", "3", "--retry-delay", "0"]
    quiet = ferry("-q", "ls", url, *flags)
    assert quiet.exit_code == 1
    assert quiet.stderr.splitlines() == [quiet.stderr.strip()]  # one line, under -q
    assert "connection refused" in quiet.stderr
    verbose = ferry("-v", "ls", url, *flags)
    assert verbose.stderr.count("; retry ") == 2, verbose.stderr


def test_json_is_written_on_every_exit(upstream: tuple[Path, str], tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: x\n")
    assert ferry("sync", str(bad), "--json", str(report)).exit_code == 2
    failed = json.loads(report.read_text())
    assert failed["exit_code"] == 2 and "target: is required" in failed["error"]
    assert failed["job"] == str(bad) and failed["command"] == "sync"
    assert failed["started"].endswith("Z") and failed["finished"] >= failed["started"]
    assert failed["version"] and failed["host"]

    job = job_yaml(tmp_path / "job.yaml", upstream[1], str(tmp_path / "mirror"))
    assert ferry("sync", str(job), "--json", str(report)).exit_code == 0
    done = json.loads(report.read_text())
    assert done["exit_code"] == 0 and done["error"] is None
    linux = next(s for s in done["subdirs"] if s["subdir"] == "linux-64")
    assert "zlib-1.3.1-h0_0.conda" in linux["files"]["added"]

    proxy = FaultProxy(int(upstream[1].split(":")[2].split("/")[0]))
    proxy.default = "slow:2000"
    slow = upstream[1].replace(f":{proxy.target_port}/", f":{proxy.port}/")
    job = job_yaml(tmp_path / "slow.yaml", slow, str(tmp_path / "other"))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conda_ferry", "sync", str(job), "--json", str(report)],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not proxy.connections and time.monotonic() < deadline:
            time.sleep(0.05)  # the run has begun talking to upstream
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proxy.close()
    assert proc.returncode == 143, err.decode()
    stopped = json.loads(report.read_text())
    assert stopped["exit_code"] == 143 and stopped["error"] == "stopped by SIGTERM"


def test_a_failure_is_said_once_on_stderr(tmp_path: Path) -> None:
    job = job_yaml(tmp_path / "job.yaml", str(tmp_path / "nowhere"), str(tmp_path / "mirror"))
    for flags in ([], ["-q"]):
        result = ferry(*flags, "sync", str(job))
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.count("upstream serves no repodata for linux-64") == 1


def test_a_library_warning_is_one_redacted_debug_line() -> None:
    """dateutil warns on a date a lying server sends; cron's mail gets no source lines."""
    script = (
        "import warnings\n"
        "from conda_ferry.mirror.cli import setup_logging\n"
        "setup_logging(int(__import__('sys').argv[1]))\n"
        "warnings.warn('tzname X for https://me:hunter2@host/x\\nnot understood')\n"
    )
    for verbosity, lines in ((0, 0), (1, 1)):
        run = subprocess.run(
            [sys.executable, "-c", script, str(verbosity)], capture_output=True, text=True
        )
        assert run.returncode == 0 and run.stdout == "", run.stderr
        assert len(run.stderr.splitlines()) == lines, run.stderr
    assert "UserWarning" in run.stderr and "not understood" in run.stderr
    assert "hunter2" not in run.stderr and "warnings.warn" not in run.stderr
