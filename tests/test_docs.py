"""The docs cannot drift: the job reference is checked against the schema, every job
shown parses, every error line quoted is still in the code, the nginx configuration
shown is served and checked, and every command shown is run.

Commands run in a sandbox per page: absolute paths (``/etc``, ``/srv``, ``/var``,
``/media``) are moved below it, and conda-forge is a small stand-in channel with the
names the pages use, served by nginx. The install and test commands of the getting
started page are what CI itself runs before this test, so they are stubbed here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conda_ferry.gateways import GatewayOptions, open_gateway
from conda_ferry.index.channel import IndexOptions, index_channel
from conda_ferry.index.publish import OutputOptions
from conda_ferry.mirror.config import SNAPSHOT_KEYS, TOP_KEYS, parse_job
from conda_ferry.mirror.filters import Filters
from tests.pkgmaker import Spec, write_package
from tests.servers import Server, free_port, require, spawn, stop, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
CONDA_FORGE = "https://conda.anaconda.org/conda-forge"
STAND_IN = [  # the names the pages' jobs and commands use
    Spec("python", "3.12.1", "h0_0", subdir="linux-64"),
    Spec("numpy", "2.1.0", "py312h0_0", subdir="linux-64", depends=["python >=3.12,<3.13"]),
    Spec("requests", "2.32.3", "pyh0_0", noarch="python", depends=["python >=3.8", "urllib3"]),
    Spec("urllib3", "2.2.3", "pyh0_0", noarch="python", depends=["python >=3.8"]),
]


def fences(page: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text())]


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_the_job_reference_is_the_schema() -> None:
    text = (DOCS / "jobs.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_.*]+)` \|", text, re.M))
    schema = set(TOP_KEYS)
    schema |= {f"filters.{key}" for key in Filters.KEYS}
    schema |= {f"outputs.{f.name}" for f in dataclasses.fields(OutputOptions)}
    schema |= {f"snapshots.{key}" for key in SNAPSHOT_KEYS}
    schema |= {f"*_options.{f.name}" for f in dataclasses.fields(GatewayOptions)}
    assert documented == schema


def lockfiles_shown() -> dict[str, str]:
    """The lockfiles the pages show (a block headed ``# .../NAME.lock``), by path."""
    return {
        body.splitlines()[0][2:]: body
        for page in pages()
        for lang, body in fences(page)
        if lang == "yaml" and body.startswith("# ") and body.splitlines()[0].endswith(".lock")
    }


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_job_shown_parses(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a job's relative lockfiles are found
    for path, body in lockfiles_shown().items():
        Path(Path(path).name).write_text(body)
    for lang, body in fences(page):
        if lang == "yaml" and re.search(r"^source:", body, re.M):
            parse_job(f"{page.name}.yaml", body)  # a mistake raises ConfigError


def test_every_error_line_quoted_is_in_the_code() -> None:
    text = (DOCS / "troubleshooting.md").read_text().split("## By error line")[1]
    code = "".join(
        p.read_text() for d in ("gateways", "index", "mirror") for p in (ROOT / d).glob("*.py")
    )
    quoted = [
        q for row in re.findall(r"^\| (.*?) \|", text, re.M) for q in re.findall(r"`([^`]+)`", row)
    ]
    assert len(quoted) > 10
    assert [q for q in quoted if q not in code] == []


# -- the nginx configuration of the serving page ------------------------------------


def test_the_nginx_configuration_shown_serves_a_mirror(
    synced: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, mirror, _ = synced
    shown = next(body for lang, body in fences(DOCS / "serving.md") if lang == "nginx")
    port = free_port()
    server = shown.replace("listen 80;", f"listen 127.0.0.1:{port};")
    server = server.replace("root /srv/mirror;", f"root {mirror.parent};")
    conf = tmp_path / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user} daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
        "events {}\nhttp {\n"
        f"client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
        f"fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi;\n"
        f"scgi_temp_path {tmp_path}/scgi; access_log off;\n"
        "types { application/json json; text/html html; }\n"
        f"{server}\n}}\n"
    )
    proc = spawn([require("nginx"), "-c", str(conf), "-p", str(tmp_path)], tmp_path / "out")
    try:
        wait_for_port(port, proc, "nginx", tmp_path / "out")
        base = f"http://127.0.0.1:{port}/{mirror.name}"

        def get(path: str, gzip: bool = False) -> tuple[int, dict[str, str]]:
            request = urllib.request.Request(f"{base}/{path}")
            if gzip:
                request.add_header("Accept-Encoding", "gzip")
            try:
                with urllib.request.urlopen(request) as answer:
                    return answer.status, dict(answer.headers)
            except urllib.error.HTTPError as exc:
                return exc.code, dict(exc.headers)

        short = "public, max-age=60"
        assert get("linux-64/repodata.json")[1]["Cache-Control"] == short
        assert get("linux-64/repodata.json", gzip=True)[1].get("Content-Encoding") == "gzip"
        assert get("linux-64/repodata_shards.msgpack.zst")[1]["Cache-Control"] == short
        assert get("linux-64/repodata.jlap")[1]["Cache-Control"] == short
        forever = "public, max-age=31536000, immutable"
        shard = next((mirror / "linux-64/shards").iterdir()).name
        assert get(f"linux-64/shards/{shard}")[1]["Cache-Control"] == forever
        package = next((mirror / "linux-64").glob("*.conda")).name
        assert get(f"linux-64/{package}")[1]["Cache-Control"] == forever
        assert get("")[0] == 200  # the channel page is the index
        (mirror / "linux-64/.pngtool.conda.0123456789ab.part").write_bytes(b"in flight")
        (mirror / "linux-64/.ferry.lock").write_bytes(b"{}")
        for hidden in (
            ".ferry/linux-64.json",
            "linux-64/.ferry.lock",
            "linux-64/.pngtool.conda.0123456789ab.part",
        ):
            assert get(hidden)[0] == 404, hidden
    finally:
        stop(proc)


# -- every command shown -------------------------------------------------------------


def relocate(text: str, sandbox: Path, upstream: str) -> str:
    text = text.replace(CONDA_FORGE, upstream).replace("/usr/bin/ferry", "ferry")
    return re.sub(r"(?<![\w.~])/(etc|srv|var|media)/", lambda m: f"{sandbox}/{m.group(1)}/", text)


def commands(lang: str, body: str) -> str | None:
    """The shell text a fenced block runs, or None for a block that runs nothing."""
    if lang == "sh":
        return body
    if lang == "cron":
        lines = [ln for ln in body.splitlines() if ln.strip() and not ln.startswith("#")]
        return "\n".join(ln.split(None, 5)[5] for ln in lines)
    if lang == "ini":
        joined = body.replace("\\\n", " ")
        return "\n".join(m for m in re.findall(r"^ExecStart=(.*)$", joined, re.M))
    return None


def sandbox_for(page: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    sandbox = tmp_path / page.stem
    for directory in (
        "etc/ferry",
        "var/log/ferry",
        "var/lib/ferry",
        "var/lib/node_exporter",
        "media/transfer",
        "bin",
        ".venv/bin",
    ):
        (sandbox / directory).mkdir(parents=True)
    shutil.copytree(ROOT / "configs", sandbox / "configs")
    real = Path(sys.executable).parent / "ferry"
    for link in (sandbox / "bin/ferry", sandbox / ".venv/bin/ferry"):
        link.symlink_to(real)
    stubs = {  # CI has installed and is testing: these two run nothing here
        ".venv/bin/pip": "exit 0",
        ".venv/bin/python": f'[ "$1 $2" = "-m pytest" ] && exit 0; exec {sys.executable} "$@"',
    }
    for name, script in stubs.items():
        (sandbox / name).write_text(f"#!/bin/sh\n{script}\n")
        (sandbox / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{sandbox / 'bin'}:{os.environ['PATH']}"}
    return sandbox, env


@pytest.fixture(scope="module")
def stand_in(nginx: Server) -> str:
    """A conda-forge of four packages, indexed with channeldata, served by nginx."""
    root = nginx.root / "conda-forge"
    for spec in STAND_IN:
        write_package(root, spec)
    with open_gateway(str(root)) as gateway:
        index_channel(
            gateway, IndexOptions(subdirs=["linux-64", "noarch"], outputs=OutputOptions(html=False))
        )
    return f"{nginx.url}/conda-forge"


RUNNABLE = [p for p in pages() if any(commands(lang, body) for lang, body in fences(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.name)
def test_every_command_shown_runs(page: Path, stand_in: str, tmp_path: Path) -> None:
    sandbox, env = sandbox_for(page, tmp_path)
    ran = 0
    for lang, body in fences(page):
        header = body.splitlines()[0] if body else ""
        if lang == "yaml" and header.startswith("# ") and header.endswith((".yaml", ".lock")):
            path = Path(relocate(header[2:], sandbox, stand_in))
            path = path if path.is_absolute() else sandbox / path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(relocate(body, sandbox, stand_in))
            continue
        script = commands(lang, body)
        if not script:
            continue
        script = relocate(script, sandbox, stand_in)
        shell = 'python3() { [ "$1 $2" = "-m venv" ] || command python3 "$@"; }\nset -e\n'
        done = subprocess.run(
            ["bash", "-c", shell + script], cwd=sandbox, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{page.name}:\n{script}\n{done.stdout}\n{done.stderr}"
        ran += script.count("ferry ")
    assert ran > 0
