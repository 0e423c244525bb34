"""The shape of the code: what is installed, who imports whom, options said once."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import grimp
import pytest

from conda_ferry.gateways import GatewayOptions
from conda_ferry.gateways.localfs import LocalGateway
from conda_ferry.index.publish import OutputOptions
from conda_ferry.mirror.cli import main
from conda_ferry.mirror.config import parse_job
from tests.helpers import ferry
from tests.upstream import build_upstream, job_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: setuptools' build/ must not leak old files in
    shutil.copytree(
        ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {n for n in names if not n.endswith(".dist-info")} == {"conda_ferry"}
    assert not any("pkgmaker" in n or "tests/" in n for n in zipfile.ZipFile(wheel).namelist())


def test_no_two_modules_import_each_other() -> None:
    graph = grimp.build_graph("conda_ferry")
    mutual = sorted(
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if a < b and a in graph.find_modules_directly_imported_by(b)
    )
    assert mutual == []


def _option_names(command: click.Command) -> set[str]:
    return {
        name.lstrip("-").split("/")[0]
        for param in command.params
        if isinstance(param, click.Option)
        for name in param.opts
    }


@pytest.mark.parametrize(
    "cls,command,job_key",
    [
        (GatewayOptions, "ls", "source_options"),
        (OutputOptions, "index", "outputs"),
    ],
)
def test_options_are_declared_once(cls: type, command: str, job_key: str) -> None:
    """Every declared field is a command-line option and a job key, by the same name."""
    cli = _option_names(main.commands[command])
    for spec in dataclasses.fields(cls):
        assert spec.metadata.get("help"), f"{spec.name} has no help text"
        assert spec.name.replace("_", "-") in cli
        value = "x" if spec.default is None else spec.default
        if spec.metadata.get("kind") == "file":
            value = __file__
        protocols = spec.metadata.get("protocols") or ()
        source = f"{protocols[0]}://host/a" if protocols else "a"  # a URL the option serves
        job = parse_job(
            "job.yaml",
            f"source: {source}\ntarget: b\nsubdirs: [noarch]\n{job_key}:\n"
            f"  {spec.name}: {str(value).lower() if isinstance(value, bool) else value}\n",
        )
        assert getattr(getattr(job, job_key), spec.name) == value


def test_a_sync_lists_and_reads_each_target_subdir_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_upstream(tmp_path / "up")
    target = tmp_path / "mirror"
    listed: list[str] = []
    read: list[str] = []
    real_list, real_open = LocalGateway._listdir, LocalGateway._open

    def counting_list(self: LocalGateway, path: str) -> list:  # type: ignore[type-arg]
        if self.root == target:
            listed.append(path)
        return real_list(self, path)

    def counting_open(self: LocalGateway, path: str, *args: object) -> tuple:  # type: ignore[type-arg]
        if self.root == target and path.endswith("/repodata.json"):
            read.append(path)
        return real_open(self, path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalGateway, "_listdir", counting_list)
    monkeypatch.setattr(LocalGateway, "_open", counting_open)
    job = job_yaml(tmp_path / "job.yaml", str(tmp_path / "up"), str(target))
    assert ferry("sync", str(job)).exit_code == 0
    for subdir in ("linux-64", "noarch"):
        assert listed.count(subdir) == 1, listed
        assert read.count(f"{subdir}/repodata.json") == 1, read


@pytest.mark.parametrize(
    "cls,doc", [(GatewayOptions, "docs/gateways.md"), (OutputOptions, "docs/jobs.md")]
)
def test_every_declared_option_is_documented(cls: type, doc: str) -> None:
    text = (ROOT / doc).read_text()
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in text]
    assert missing == []


def test_the_version_is_said_once_in_effect() -> None:
    """``ferry --version`` reads the package's constant (no importlib.metadata at
    start); it must be the distribution's version."""
    from importlib.metadata import version

    import conda_ferry

    assert conda_ferry.__version__ == version("conda-ferry")


def test_the_sftp_gateway_loads_paramiko_without_invoke() -> None:
    """invoke is a third of paramiko's import time, for an ssh_config feature ferry
    never uses; held out while paramiko loads, it stays importable for others."""
    code = (
        "import sys; import conda_ferry.gateways.sftp; "
        "print('invoke' in sys.modules); import invoke; print('invoke' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


def test_a_sync_loads_only_the_rattler_types_it_uses_and_rattler_stays_whole() -> None:
    """rattler's package ``__init__`` loads its solver, installer and repodata gateway
    (25-40 ms of every start-up); a sync and its filters load versions and match specs
    alone, and ``import rattler`` afterwards still gives the whole package."""
    code = (
        "import sys; import conda_ferry.mirror.sync, conda_ferry.mirror.filters; "
        "print(sorted(m for m in ('rattler.solver', 'rattler.repo_data', 'rattler.install') "
        "if m in sys.modules)); "
        "from conda_ferry.mirror.filters import SpecMatcher, Candidate; "
        "c = Candidate('noarch', 'a-1-0.conda', {'name': 'a', 'version': '1', 'build': '0'}); "
        "print(SpecMatcher('a >=1').matches(c), SpecMatcher('a >=2').matches(c)); "
        "import rattler; "
        "print(rattler.solve.__name__, rattler.Version('1.10') > rattler.Version('1.9'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:3] == ["[]", "True False", "solve True"]


def test_a_rattler_whose_submodules_need_the_package_is_loaded_whole(tmp_path: Path) -> None:
    """Some py-rattler releases' submodules import names from the package itself;
    loaded alone, they would meet its ``__init__`` half-run. Then rattler loads whole,
    as a plain ``import rattler`` does."""
    fake = tmp_path / "rattler"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "from rattler.version import Version\nfrom rattler.match_spec import MatchSpec\n"
        "from rattler.exceptions import InvalidVersionError\nWHOLE = True\n"
    )
    (fake / "version.py").write_text("class Version(str): pass\n")
    (fake / "exceptions.py").write_text("class InvalidVersionError(Exception): pass\n")
    (fake / "match_spec.py").write_text("from rattler import Version\nclass MatchSpec: pass\n")
    code = (
        "import sys; from conda_ferry.index.rattlertypes import MatchSpec, Version; "
        "import rattler; print(rattler.WHOLE, rattler.Version is Version, "
        "rattler.__file__.startswith(sys.argv[1]))"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert done.stdout.split() == ["True", "True", "True"]


def test_spec_filters_match_with_py_rattler_0_22() -> None:
    """py-rattler before 0.28 has no BuildString; a record built with one failed, and
    every match spec of a filter then matched nothing, silently."""
    from tests.oldrattler import old_rattler_python

    code = (
        "from conda_ferry.index.rattlertypes import MatchSpec, package_record; "
        "r = package_record('a', '1.0', '0', 0, 'noarch'); "
        "print(MatchSpec('a >=1').matches(r), MatchSpec('a >=2').matches(r))"
    )
    done = subprocess.run(
        [old_rattler_python(), "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=True,
    )
    assert done.stdout.split() == ["True", "False"]


def test_struct_defaults_are_values_not_dataclass_fields() -> None:
    """A ``dataclasses.field(...)`` left in a msgspec Struct would be every
    instance's default value itself; nothing else notices."""
    import importlib
    import pkgutil

    import msgspec

    import conda_ferry

    bad = []
    for module in pkgutil.walk_packages(conda_ferry.__path__, "conda_ferry."):
        if module.name.endswith("__main__"):
            continue  # runs the command line
        mod = importlib.import_module(module.name)
        for name, value in vars(mod).items():
            if isinstance(value, type) and issubclass(value, msgspec.Struct):
                bad += [
                    f"{module.name}.{name}.{f.name}"
                    for f in msgspec.structs.fields(value)
                    if isinstance(f.default, dataclasses.Field)
                ]
    assert bad == []
