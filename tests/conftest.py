"""Session-wide real servers, and a fresh empty area on each for every test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from conda_ferry.gateways import Gateway, GatewayOptions, open_gateway
from tests import servers
from tests.upstream import build_upstream

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FAST_RETRY: dict[str, Any] = {"retries": 4, "retry_delay": 0.05}
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


def _server_fixture(start: Callable[[Path], servers.Server], name: str) -> Any:
    """A session-wide server started on first use and stopped at the end."""

    @pytest.fixture(scope="session", name=name)
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
        server = start(tmp_path_factory.mktemp(name))
        yield server
        servers.stop(server.proc)

    return fixture


def _start_moto(base: Path) -> servers.Server:
    for key, value in S3_ENV.items():
        os.environ.setdefault(key, value)
    server = servers.start_moto(base)
    boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket="ferry")
    return server


nginx = _server_fixture(servers.start_nginx, "nginx")
moto = _server_fixture(_start_moto, "moto")
ftpd = _server_fixture(servers.start_ftp, "ftpd")
sshd = _server_fixture(servers.start_sshd, "sshd")


@pytest.fixture
def upstream(nginx: servers.Server, request: pytest.FixtureRequest) -> tuple[Path, str]:
    """The demo upstream channel, served by nginx: its directory and its URL."""
    name = f"up-{request.node.name}".replace("[", "-").replace("]", "")[:60]
    root = nginx.root / name
    build_upstream(root)
    return root, f"{nginx.url}/{name}"


@pytest.fixture
def synced(upstream: tuple[Path, str], tmp_path: Path) -> tuple[Path, Path, Path]:
    """The demo upstream mirrored once: upstream's directory, the mirror, the job."""
    from tests.helpers import ferry
    from tests.upstream import job_yaml

    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", upstream[1], str(mirror))
    result = ferry("sync", str(job))
    assert result.exit_code == 0, result.output
    return upstream[0], mirror, job


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test indexes with a cache of its own, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@dataclass
class Area:
    """A fresh directory on one server: the gateway under test and a back door.

    ``seed`` and ``peek`` reach the storage without the gateway (the disk behind
    nginx, FTP and SFTP; boto3 for S3), so a test checks the adapter, not itself.
    """

    kind: str
    url: str
    options: GatewayOptions
    seed: Callable[[str, bytes], None]
    peek: Callable[[str], bytes | None]
    disk: Path | None = None  # the directory behind the server, where there is one

    def gateway(self) -> Gateway:
        return open_gateway(self.url, self.options)


def disk_area(kind: str, root: Path, url: str, options: GatewayOptions) -> Area:
    root.mkdir(parents=True, exist_ok=True)

    def seed(path: str, data: bytes) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def peek(path: str) -> bytes | None:
        target = root / path
        return target.read_bytes() if target.is_file() else None

    return Area(kind, url, options, seed, peek, root)


def make_area(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Area:
    name = uuid.uuid4().hex[:10]
    base = GatewayOptions(**FAST_RETRY, timeout=10)
    if kind == "localfs":
        return disk_area(kind, tmp_path / "root", str(tmp_path / "root"), base)
    if kind == "http":
        server = request.getfixturevalue("nginx")
        return disk_area(kind, server.root / name, f"{server.url}/{name}", base)
    if kind == "ftp":
        server = request.getfixturevalue("ftpd")
        return disk_area(kind, server.root / name, f"{server.url}/{name}", base)
    if kind == "sftp":
        server = request.getfixturevalue("sshd")
        options = GatewayOptions(
            **FAST_RETRY,
            timeout=10,
            key_file=server.extra["key_file"],
            known_hosts=server.extra["known_hosts"],
        )
        return disk_area(kind, server.root / name, f"{server.url}/{name}", options)
    assert kind == "s3"
    server = request.getfixturevalue("moto")
    client = boto3.client("s3", endpoint_url=server.url)
    options = GatewayOptions(**FAST_RETRY, timeout=10, endpoint_url=server.url)

    def seed(path: str, data: bytes) -> None:
        client.put_object(Bucket="ferry", Key=f"{name}/{path}", Body=data)

    def peek(path: str) -> bytes | None:
        try:
            return bytes(client.get_object(Bucket="ferry", Key=f"{name}/{path}")["Body"].read())
        except client.exceptions.NoSuchKey:
            return None

    return Area(kind, f"s3://ferry/{name}", options, seed, peek)


ALL = ["localfs", "http", "s3", "ftp", "sftp"]
WRITABLE = ["localfs", "s3", "ftp", "sftp"]


@pytest.fixture(params=ALL)
def area(request: pytest.FixtureRequest, tmp_path: Path) -> Area:
    return make_area(request.param, request, tmp_path)


@pytest.fixture(params=WRITABLE)
def writable(request: pytest.FixtureRequest, tmp_path: Path) -> Area:
    return make_area(request.param, request, tmp_path)
