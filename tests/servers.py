"""Real servers on 127.0.0.1 for the tests: nginx, moto_server, pyftpdlib, sshd.

Each starts in a temporary directory on a free port and is stopped afterwards;
a test that needs one asks for its fixture in conftest.py.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a server whose output goes to a file: a pipe nobody reads would fill up
    and block the server mid-request."""
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {out[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def require(binary: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None
    )
    if path is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"{binary} is not installed; .ci/run must install it")
        pytest.skip(f"{binary} is not installed (apt-get install it, or run .ci/run)")
    return path


@dataclass
class Server:
    url: str
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    extra: dict[str, str]


NGINX_CONF = """
{user}
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {dir}/access.log combined;
    client_body_temp_path {dir}/tmp_body;
    proxy_temp_path {dir}/tmp_proxy;
    fastcgi_temp_path {dir}/tmp_fastcgi;
    uwsgi_temp_path {dir}/tmp_uwsgi;
    scgi_temp_path {dir}/tmp_scgi;
    sendfile on;
    types {{
        application/json json;
        text/html html;
        application/octet-stream conda bz2 zst jlap msgpack;
    }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {dir}/tls.crt;
        ssl_certificate_key {dir}/tls.key;
        root {root};
        autoindex on;
        gzip on;
        gzip_types application/json;
        gzip_min_length 32;
    }}
}}
"""


def start_nginx(base: Path) -> Server:
    binary = require("nginx")
    base.mkdir(parents=True, exist_ok=True)
    root = base / "www"
    root.mkdir(parents=True)
    port, tls_port = free_port(), free_port()
    # HTTPS too, with a certificate of its own for 127.0.0.1 that no CA bundle trusts
    subprocess.run(
        [
            require("openssl"),
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(base / "tls.key"), "-out", str(base / "tls.crt")),
        ],
        check=True,
        capture_output=True,
    )
    user = "user root;" if os.geteuid() == 0 else ""
    conf = base / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, dir=base, port=port, tls_port=tls_port, root=root))
    log = base / "nginx.out"
    proc = spawn([binary, "-c", str(conf), "-p", str(base), "-e", str(base / "error.log")], log)
    wait_for_port(port, proc, "nginx", log)
    wait_for_port(tls_port, proc, "nginx", log)
    extra = {
        "log": str(base / "access.log"),
        "https": f"https://127.0.0.1:{tls_port}",
        "ca": str(base / "tls.crt"),
    }
    return Server(f"http://127.0.0.1:{port}", root, port, proc, extra)


def access_log(server: Server) -> list[str]:
    """nginx's access log once every request answered so far is in it.

    nginx writes a request's line just after sending its last byte, so a client that
    has its answer can read the log a moment before the line lands (CI once did).
    nginx's one worker logs a request before it reads the next: once a marker
    request's line is in, so is every earlier answered request's. Marker lines are
    left out, so counts and slices of the log stay consistent between calls.
    """
    marker = f"/.log-marker-{uuid.uuid4().hex}"
    with contextlib.suppress(urllib.error.HTTPError):  # a 404 is the expected answer
        urllib.request.urlopen(server.url + marker, timeout=10).close()
    path = Path(server.extra["log"])
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines()
        if any(f" {marker} " in line for line in lines) or time.monotonic() > deadline:
            return [line for line in lines if " /.log-marker-" not in line]
        time.sleep(0.01)


def start_moto(base: Path) -> Server:
    base.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).parent / "moto_server"  # this venv's, before any on PATH
    binary = str(beside) if beside.exists() else shutil.which("moto_server") or "moto_server"
    port = free_port()
    log = base / "moto.out"
    proc = spawn([binary, "-H", "127.0.0.1", "-p", str(port)], log, cwd=base)
    wait_for_port(port, proc, "moto_server", log)
    return Server(f"http://127.0.0.1:{port}", base, port, proc, {})


def start_ftp(base: Path) -> Server:
    base.mkdir(parents=True, exist_ok=True)
    root = base / "ftproot"
    root.mkdir(parents=True)
    port = free_port()
    log = base / "ftp.out"
    args = [
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "-d",
        str(root),
        "-u",
        "ferry",
        "-P",
        "s3cret-ftp",
    ]
    proc = spawn([sys.executable, "-m", "pyftpdlib", *args], log)
    wait_for_port(port, proc, "pyftpdlib", log)
    return Server(f"ftp://ferry:s3cret-ftp@127.0.0.1:{port}", root, port, proc, {})


SSHD_CONF = """
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin yes
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def start_sshd(base: Path) -> Server:
    binary = require("sshd")
    keygen = require("ssh-keygen")
    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True
        )
    (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
    host_pub = (base / "host_key.pub").read_text().split()
    (base / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    conf = base / "sshd_config"
    conf.write_text(SSHD_CONF.format(port=port, dir=base))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = base / "sshd.out"
    proc = spawn([binary, "-D", "-e", "-f", str(conf)], log)
    wait_for_port(port, proc, "sshd", log)
    root = base / "sftproot"
    root.mkdir()
    user = getpass.getuser()
    return Server(
        f"sftp://{user}@127.0.0.1:{port}{root}",
        root,
        port,
        proc,
        {"key_file": str(base / "client_key"), "known_hosts": str(base / "known_hosts")},
    )
