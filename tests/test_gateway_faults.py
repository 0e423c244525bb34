"""Retries and resume, proved through a proxy that drops, fails and corrupts."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conda_ferry.gateways import (
    Expected,
    GatewayOptions,
    NotFound,
    TransientError,
    copy_file,
    copy_prefetched,
    open_gateway,
)
from conda_ferry.gateways.errors import TooSlow
from conda_ferry.mirror.cli import main
from tests.conftest import FAST_RETRY
from tests.faultproxy import FaultProxy
from tests.servers import Server

DATA = os.urandom(2 * 1024 * 1024 + 3)


@pytest.fixture
def http_proxy(nginx: Server) -> Iterator[FaultProxy]:
    (nginx.root / "faults").mkdir(exist_ok=True)
    (nginx.root / "faults" / "pkg.tar.bz2").write_bytes(DATA)
    proxy = FaultProxy(nginx.port)
    yield proxy
    proxy.close()


def _http(proxy: FaultProxy) -> str:
    return f"http://127.0.0.1:{proxy.port}/faults"


def test_http_resumes_after_a_drop_mid_body(http_proxy: FaultProxy) -> None:
    http_proxy.plan("drop:700000", "drop:700000")
    with open_gateway(_http(http_proxy), GatewayOptions(**FAST_RETRY)) as gw:
        assert gw.read_bytes("pkg.tar.bz2") == DATA
    assert http_proxy.connections == 3


@pytest.mark.parametrize(
    "fault", ["status:500", "status:503", "status:429:0", "stall:0.1", "drop:60", "drop:0"]
)
def test_http_retries_transient_answers(http_proxy: FaultProxy, fault: str) -> None:
    http_proxy.plan(fault, fault)
    with open_gateway(_http(http_proxy), GatewayOptions(**FAST_RETRY)) as gw:
        assert gw.read_bytes("pkg.tar.bz2") == DATA


def test_http_gives_up_after_bounded_attempts(http_proxy: FaultProxy) -> None:
    http_proxy.plan(*["status:503"] * 10)
    with (
        open_gateway(_http(http_proxy), GatewayOptions(**FAST_RETRY)) as gw,
        pytest.raises(TransientError),
    ):
        gw.read_bytes("pkg.tar.bz2")
    assert http_proxy.connections == FAST_RETRY["retries"]


SMALL_DATA = os.urandom(300_000)


@pytest.mark.parametrize(
    ("fault", "short"),
    [
        ("pass", True),  # whole and right: written from what arrived
        ("status:503", False),  # answered otherwise: copy_file's to retry
        ("drop:60", False),  # cut inside the headers
        ("drop:200000", False),  # cut inside the body
        ("flip:100000", False),  # corrupted in transit
        ("freeze:150000", False),  # silent past the timeout
    ],
)
def test_http_small_prefetched_file_is_written_only_when_it_came_whole_and_right(
    nginx: Server, tmp_path: Path, fault: str, short: bool
) -> None:
    """A prefetched small file that arrived whole with a 200 and the record's digest
    is written as it is; anything else leaves it to copy_file, which gets it right."""
    (nginx.root / "short").mkdir(exist_ok=True)
    (nginx.root / "short" / "pkg.conda").write_bytes(SMALL_DATA)
    expect = Expected(len(SMALL_DATA), hashlib.sha256(SMALL_DATA).hexdigest())
    proxy = FaultProxy(nginx.port)
    proxy.plan(fault)
    options = GatewayOptions(**FAST_RETRY, timeout=1)
    try:
        with (
            open_gateway(f"http://127.0.0.1:{proxy.port}/short", options) as source,
            open_gateway(str(tmp_path)) as target,
        ):
            source.prefetch(["pkg.conda"])
            copied = copy_prefetched(source, "pkg.conda", target, "pkg.conda", expect)
            assert (copied is not None) == short
            assert not list(tmp_path.iterdir()) or short
            if copied is None:
                copied = copy_file(source, "pkg.conda", target, "pkg.conda", expect, attempts=2)
    finally:
        proxy.close()
    assert (tmp_path / "pkg.conda").read_bytes() == SMALL_DATA
    assert copied.sha256 == expect.sha256 and copied.size == len(SMALL_DATA)


def test_http_small_file_trickling_in_is_judged_by_min_rate(
    nginx: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small answer still coming after a while is left to the stream reader, whose
    min_rate ends it: the short way never waits on a trickle for long."""
    from conda_ferry.gateways import curl

    monkeypatch.setattr(curl, "WHOLE_WITHIN", 0.3)
    (nginx.root / "short").mkdir(exist_ok=True)
    (nginx.root / "short" / "slow.conda").write_bytes(SMALL_DATA[:20_000])
    proxy = FaultProxy(nginx.port)
    proxy.default = "trickle:400"  # 50 s for the whole file
    options = GatewayOptions(retries=1, timeout=1, min_rate=1024)
    try:
        with (
            open_gateway(f"http://127.0.0.1:{proxy.port}/short", options) as source,
            open_gateway(str(tmp_path)) as target,
        ):
            source.prefetch(["slow.conda"])
            assert copy_prefetched(source, "slow.conda", target, "x", Expected(20_000)) is None
            with pytest.raises(TooSlow, match="below min_rate"):
                copy_file(source, "slow.conda", target, "x", Expected(20_000))
    finally:
        proxy.close()
    assert not list(tmp_path.iterdir())


def test_http_small_file_taken_whole_counts_against_max_rate(nginx: Server, tmp_path: Path) -> None:
    """Bytes taken whole are charged to the gateway's max_rate as a reader's are, so
    the transfers after them wait their turn."""
    (nginx.root / "short").mkdir(exist_ok=True)
    (nginx.root / "short" / "capped.conda").write_bytes(SMALL_DATA)
    expect = Expected(len(SMALL_DATA), hashlib.sha256(SMALL_DATA).hexdigest())
    with (
        open_gateway(f"{nginx.url}/short", GatewayOptions(max_rate=1000)) as source,
        open_gateway(str(tmp_path)) as target,
    ):
        source.prefetch(["capped.conda"])
        assert copy_prefetched(source, "capped.conda", target, "c", expect) is not None
        cap = source._cap  # type: ignore[attr-defined]
        assert cap._free_at - time.monotonic() > len(SMALL_DATA) / 1000 - 60


def test_http_small_file_answered_404_fails_with_its_words(nginx: Server, tmp_path: Path) -> None:
    with (
        open_gateway(nginx.url, GatewayOptions(**FAST_RETRY)) as source,
        open_gateway(str(tmp_path)) as target,
    ):
        source.prefetch(["missing.conda"])
        assert copy_prefetched(source, "missing.conda", target, "x", Expected(5)) is None
        with pytest.raises(NotFound, match=r"missing\.conda: HTTP 404"):
            copy_file(source, "missing.conda", target, "x", Expected(5))
    assert not list(tmp_path.iterdir())


def test_s3_resumes_after_a_drop_mid_body(moto: Server) -> None:
    proxy = FaultProxy(moto.port)
    try:
        endpoint = f"http://127.0.0.1:{proxy.port}"
        options = GatewayOptions(**FAST_RETRY, endpoint_url=endpoint)
        with open_gateway("s3://ferry/faults", options) as gw:
            gw.write_bytes("big.conda", DATA)
            proxy.plan("drop:900000")
            assert gw.read_bytes("big.conda") == DATA
    finally:
        proxy.close()


def _sftp_through(proxy: FaultProxy, sshd: Server, **options: Any) -> tuple[str, GatewayOptions]:
    """The URL of sshd's faults/ through ``proxy``, and options that trust its key there."""
    url = sshd.url.replace(f":{sshd.port}", f":{proxy.port}") + "/faults"
    known = Path(sshd.extra["known_hosts"]).read_text()
    hosts = Path(sshd.extra["known_hosts"]).with_name(f"known_hosts_{proxy.port}")
    hosts.write_text(known.replace(f"]:{sshd.port}", f"]:{proxy.port}"))
    key = sshd.extra["key_file"]
    return url, GatewayOptions(**FAST_RETRY, key_file=key, known_hosts=str(hosts), **options)


@pytest.mark.parametrize(
    ("fault", "options"),
    [
        ("drop:1200000", {}),
        ("freeze:1200000", {"timeout": 2}),
        ("freeze:1200000", {"timeout": 2, "openssh": False}),
    ],
    ids=["connection-dies", "server-goes-silent", "server-goes-silent-paramiko"],
)
def test_sftp_resumes_from_the_last_byte(sshd: Server, fault: str, options: dict[str, Any]) -> None:
    """A silent server is the harder case: ssh keeps its connection open for minutes
    (its keepalive), so the gateway's timeout must end the wait."""
    (sshd.root / "faults").mkdir(exist_ok=True)
    (sshd.root / "faults" / "pkg.conda").write_bytes(DATA)
    proxy = FaultProxy(sshd.port)
    try:
        url, gateway_options = _sftp_through(proxy, sshd, **options)
        proxy.plan(fault)
        with open_gateway(url, gateway_options) as gw:
            assert gw.read_bytes("pkg.conda") == DATA
        assert proxy.connections == 2
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["http", "s3", "sftp", "ftp"])
def test_a_server_that_hangs_up_costs_the_retries_once(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A reader's connection, not just its body, fails within ``retries`` attempts:
    an adapter that connected with retries of its own under the reader's retries made
    a dead server cost their product (25 connections and 35 s at the defaults)."""
    server: Server = request.getfixturevalue(
        {"http": "nginx", "s3": "moto", "sftp": "sshd"}.get(kind, "ftpd")
    )
    proxy = FaultProxy(server.port)
    proxy.default = "drop:0"
    try:
        if kind == "sftp":
            url, options = _sftp_through(proxy, server)
        elif kind == "s3":
            url = "s3://ferry/faults"
            options = GatewayOptions(**FAST_RETRY, endpoint_url=f"http://127.0.0.1:{proxy.port}")
        else:
            url = server.url.replace(f":{server.port}", f":{proxy.port}")
            options = GatewayOptions(**FAST_RETRY)
        with open_gateway(url, options) as gw, pytest.raises(TransientError):
            gw.open_read("pkg.conda")
        assert proxy.connections == FAST_RETRY["retries"]
    finally:
        proxy.close()


def test_ftp_resumes_with_rest(ftpd: Server) -> None:
    (ftpd.root / "faults").mkdir(exist_ok=True)
    (ftpd.root / "faults" / "pkg.conda").write_bytes(DATA)
    with open_gateway(f"{ftpd.url}/faults", GatewayOptions(**FAST_RETRY)) as gw:
        stream = gw.open_read("pkg.conda")
        head = stream.read(1000)
        transfer = stream._stream._read.__self__  # type: ignore[attr-defined]
        transfer._sock.close()  # the data connection dies
        assert head + stream.read() == DATA


def test_cp_refuses_a_corrupted_body_and_writes_nothing(
    http_proxy: FaultProxy, tmp_path: Path
) -> None:
    digest = hashlib.sha256(DATA).hexdigest()
    http_proxy.plan("flip:1000000")
    target = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["cp", f"{_http(http_proxy)}/pkg.tar.bz2", f"{target}/", "--sha256", digest]
    )
    assert result.exit_code == 1
    assert "sha256 does not match" in result.output
    assert not target.exists() or list(target.iterdir()) == []
    http_proxy.plan("drop:1000")
    ok = CliRunner().invoke(
        main, ["cp", f"{_http(http_proxy)}/pkg.tar.bz2", f"{target}/", "--sha256", digest]
    )
    assert ok.exit_code == 0, ok.output
    assert (target / "pkg.tar.bz2").read_bytes() == DATA


def test_cli_ls_over_real_servers(nginx: Server, ftpd: Server, sshd: Server) -> None:
    (nginx.root / "lsdir").mkdir(exist_ok=True)
    (nginx.root / "lsdir" / "a.conda").write_bytes(b"x" * 10)
    result = CliRunner().invoke(main, ["ls", f"{nginx.url}/lsdir"])
    assert result.exit_code == 0 and "a.conda" in result.output
    (ftpd.root / "lsdir").mkdir(exist_ok=True)
    (ftpd.root / "lsdir" / "b.conda").write_bytes(b"y" * 2048)
    result = CliRunner().invoke(main, ["ls", f"{ftpd.url}/lsdir"])
    assert result.exit_code == 0 and "2.0 KiB" in result.output and "b.conda" in result.output
    assert "s3cret" not in result.output
    result = CliRunner().invoke(
        main,
        [
            "ls",
            f"{sshd.url}",
            "--key-file",
            sshd.extra["key_file"],
            "--known-hosts",
            sshd.extra["known_hosts"],
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "entries" in json.loads(result.stdout[result.stdout.index("{") :])
    missing = CliRunner().invoke(main, ["ls", f"{ftpd.url}/no-such-dir"])
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    assert "s3cret" not in missing.output


def test_unreachable_host_is_one_line(tmp_path: Path) -> None:
    from tests.servers import free_port

    port = free_port()  # nothing listens there
    result = CliRunner().invoke(main, ["ls", f"http://127.0.0.1:{port}/x", "--timeout", "2"])
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and "cannot reach" in lines[0]


def test_a_proxy_that_does_not_resolve_is_named_as_the_proxy() -> None:
    """Not "host name not found" for a mirror whose own name resolves (libcurl's
    code, without a lookup beyond loopback)."""
    import pycurl

    from conda_ferry.gateways.curl import _failure
    from conda_ferry.gateways.errors import network_problem

    words = network_problem(_failure(pycurl.E_COULDNT_RESOLVE_PROXY, "no proxy"))
    assert words.startswith("the proxy's host name")
    assert network_problem(_failure(pycurl.E_COULDNT_RESOLVE_HOST, "no")) == "host name not found"


def test_http_goes_through_the_proxy_the_environment_names(
    http_proxy: FaultProxy, nginx: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY in capitals too, as requests and conda read it (libcurl alone reads
    only http_proxy): the host need not resolve here, the proxy reaches it. NO_PROXY
    names the hosts reached directly."""
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{http_proxy.port}")
    with open_gateway("http://mirror.invalid/faults", GatewayOptions(**FAST_RETRY)) as gw:
        assert gw.read_bytes("pkg.tar.bz2") == DATA
    assert http_proxy.connections == 1
    monkeypatch.setenv("NO_PROXY", "localhost")
    with open_gateway(f"http://localhost:{nginx.port}/faults") as gw:
        assert gw.read_bytes("pkg.tar.bz2") == DATA
    assert http_proxy.connections == 1
