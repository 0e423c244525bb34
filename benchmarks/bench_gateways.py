"""`ferry cp` of one large file over every protocol against the tool users compare
it with, in one run: curl (HTTP, FTP), OpenSSH's sftp, boto3's download_file and
upload_file (S3).

    .venv/bin/python -m benchmarks.bench_gateways [--mb 300] [--rounds 2]

Starts the same servers as the tests (nginx, moto_server, pyftpdlib, sshd) on
loopback. ferry runs as the command a user types (interpreter start included) and
hashes every byte it moves; the peers hash nothing. Best of --rounds each, the
cases interleaved. Also prints each adapter's not-modified round trip.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import boto3

from benchmarks._common import table, timed
from conda_ferry.gateways import Gateway, GatewayOptions, open_gateway
from tests import servers

CHUNK = 1 << 20


def round_trip(gw: Gateway, name: str, runs: int = 20) -> float:
    fetched = gw.fetch_if_changed(name)
    assert fetched is not None
    fetched.stream.close()
    return (
        timed(
            lambda: [
                gw.fetch_if_changed(name, fetched.info.etag, fetched.last_modified)
                for _ in range(runs)
            ]
        )
        / runs
    )


def ferry(*args: str, env: dict[str, str] | None = None) -> Callable[[], None]:
    command = [sys.executable, "-m", "conda_ferry", "-q", "cp", *args]
    return lambda: subprocess.run(command, check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        out = base / "out.bin"
        started: list[servers.Server] = []
        try:
            nginx, moto, ftp, sshd = (
                servers.start_nginx(base / "nginx"),
                servers.start_moto(base / "moto"),
                servers.start_ftp(base / "ftp"),
                servers.start_sshd(base / "sshd"),
            )
            started = [nginx, moto, ftp, sshd]
            source = base / "big.bin"
            with open(source, "wb") as handle:
                for _ in range(args.mb):
                    handle.write(os.urandom(CHUNK))
            for root in (nginx.root, ftp.root, sshd.root):
                os.link(source, root / "big.bin")
                (root / "small.bin").write_bytes(b"x" * 1000)  # for round trips
            s3 = boto3.client("s3", endpoint_url=moto.url)
            s3.create_bucket(Bucket="bench")
            s3.upload_file(str(source), "bench", "big.bin")
            s3.put_object(Bucket="bench", Key="small.bin", Body=b"x" * 1000)
            key, known = sshd.extra["key_file"], sshd.extra["known_hosts"]
            ssh_host = urlsplit(sshd.url)
            sftp_opts = ["--key-file", key, "--known-hosts", known]
            env = {**os.environ, "AWS_ENDPOINT_URL": moto.url}
            cases: list[tuple[str, Callable[[], None], str, Callable[[], None], str]] = [
                (
                    "http",
                    ferry(f"{nginx.url}/big.bin", str(out)),
                    "curl",
                    lambda: subprocess.run(["curl", "-sfo", str(out), f"{nginx.url}/big.bin"]),
                    "",
                ),
                (
                    "sftp",
                    ferry(f"{sshd.url}/big.bin", str(out), *sftp_opts),
                    "OpenSSH sftp",
                    lambda: subprocess.run(
                        [
                            "sftp",
                            "-q",
                            "-i",
                            key,
                            "-o",
                            f"UserKnownHostsFile={known}",
                            "-P",
                            str(ssh_host.port),
                            f"{ssh_host.username}@127.0.0.1:{ssh_host.path}/big.bin",
                            str(out),
                        ],
                        check=True,
                        capture_output=True,
                    ),
                    "<= 2x",
                ),
                (
                    "s3 get",
                    ferry("s3://bench/big.bin", str(out), env=env),
                    "boto3 download_file",
                    lambda: s3.download_file("bench", "big.bin", str(out)),
                    "",
                ),
                (
                    "s3 put",
                    ferry(str(source), "s3://bench/put.bin", env=env),
                    "boto3 upload_file",
                    lambda: s3.upload_file(str(source), "bench", "put2.bin"),
                    "",
                ),
                (
                    "ftp",
                    ferry(f"{ftp.url}/big.bin", str(out)),
                    "curl ftp://",
                    lambda: subprocess.run(["curl", "-sfo", str(out), f"{ftp.url}/big.bin"]),
                    "",
                ),
            ]
            rows = [("protocol", f"ferry cp {args.mb} MB", "peer", "peer s", "ratio", "aim")]
            for name, ours, peer_name, peer, aim in cases:
                ours_s = min(timed(ours) for _ in range(args.rounds))
                peer_s = min(timed(peer) for _ in range(args.rounds))
                rows.append(
                    (
                        name,
                        f"{ours_s:.2f} s",
                        peer_name,
                        f"{peer_s:.2f} s",
                        f"{ours_s / peer_s:.2f}x",
                        aim,
                    )
                )
            table(rows)
            options = {
                "http": (nginx.url, GatewayOptions()),
                "s3": ("s3://bench", GatewayOptions(endpoint_url=moto.url)),
                "ftp": (ftp.url, GatewayOptions()),
                "sftp": (sshd.url, GatewayOptions(key_file=key, known_hosts=known)),
            }
            print("\nnot-modified round trip (conditional fetch of an unchanged file):")
            for name, (url, opts) in options.items():
                with open_gateway(url, opts) as gw:
                    print(f"  {name:5} {round_trip(gw, 'small.bin') * 1000:7.2f} ms")
        finally:
            for server in started:
                servers.stop(server.proc)


if __name__ == "__main__":
    main()
