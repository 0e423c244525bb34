"""Stream a large file through every adapter over loopback; print ratios to a disk read.

    .venv/bin/python benchmarks/bench_gateways.py [--mb 200]

Starts the same servers as the tests (nginx, moto_server, pyftpdlib, sshd).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import boto3

from conda_ferry.gateways import Gateway, GatewayOptions, open_gateway
from tests import servers

CHUNK = 1 << 20


def evict(path: Path) -> None:
    """Drop the file from the page cache, so that "disk" means the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drain(gw: Gateway, name: str, files: list[Path]) -> float:
    for path in files:
        evict(path)
    started = time.perf_counter()
    with gw.open_read(name) as stream:
        while stream.read(CHUNK):
            pass
    return time.perf_counter() - started


def round_trip(gw: Gateway, name: str, runs: int = 20) -> float:
    fetched = gw.fetch_if_changed(name)
    assert fetched is not None
    fetched.stream.close()
    started = time.perf_counter()
    for _ in range(runs):
        assert gw.fetch_if_changed(name, fetched.info.etag, fetched.last_modified) is None
    return (time.perf_counter() - started) / runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = os.urandom(CHUNK)
        started: list[servers.Server] = []
        try:
            nginx = servers.start_nginx(base / "nginx")
            started.append(nginx)
            moto = servers.start_moto(base / "moto")
            started.append(moto)
            ftp = servers.start_ftp(base / "ftp")
            started.append(ftp)
            sshd = servers.start_sshd(base / "sshd")
            started.append(sshd)
            for root in (nginx.root, ftp.root, sshd.root):
                with open(root / "big.bin", "wb") as out:
                    for _ in range(args.mb):
                        out.write(data)
            disk = open_gateway(str(nginx.root))
            s3opts = GatewayOptions(endpoint_url=moto.url)
            boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket="bench")
            s3 = open_gateway("s3://bench", s3opts)
            with disk.open_read("big.bin") as stream:
                s3.write_atomic("big.bin", stream)
            sftp_opts = GatewayOptions(
                key_file=sshd.extra["key_file"], known_hosts=sshd.extra["known_hosts"]
            )
            gateways = {
                "localfs": disk,
                "http": open_gateway(nginx.url),
                "s3": s3,
                "ftp": open_gateway(ftp.url),
                "sftp": open_gateway(sshd.url, sftp_opts),
            }
            files = [root / "big.bin" for root in (nginx.root, ftp.root, sshd.root)]
            disk_time = min(drain(disk, "big.bin", files) for _ in range(2))
            print(f"{args.mb} MB, disk read {args.mb / disk_time:.0f} MB/s")
            print(f"{'adapter':8} {'MB/s':>8} {'vs disk':>8} {'not-modified':>14}")
            for name, gw in gateways.items():
                seconds = drain(gw, "big.bin", files)
                rtt = round_trip(gw, "big.bin")
                print(
                    f"{name:8} {args.mb / seconds:8.0f} {disk_time / seconds:8.2f} "
                    f"{rtt * 1000:11.2f} ms"
                )
        finally:
            for server in started:
                servers.stop(server.proc)


if __name__ == "__main__":
    main()
