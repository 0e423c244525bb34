"""Every example in configs/ is valid, and the offline ones really run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conda_ferry.mirror.config import load_job
from tests.helpers import ferry
from tests.mirrorcheck import assert_consistent

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_is_valid(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh/id_ed25519").write_text("a key file the example names")
    (tmp_path / ".ssh/known_hosts").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path))
    job = load_job(str(path))
    assert job.subdirs


@pytest.mark.parametrize("name", ["demo.yaml", "demo-latest.yaml"])
def test_offline_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = tmp_path / "configs"
    source = Path(__file__).resolve().parents[1] / "configs"
    shutil.copytree(source / "demo-channel", configs / "demo-channel")
    shutil.copy(source / name, configs / name)
    result = ferry("sync", str(configs / name))
    assert result.exit_code == 0, result.output
    mirror = tmp_path / load_job(str(configs / name)).target.rsplit("/", 1)[-1]
    assert assert_consistent(mirror) > 0
    assert "up to date" in ferry("sync", str(configs / name)).output
    quiet = ferry("-q", "sync", str(configs / name))  # what cron mails: nothing at all
    assert quiet.exit_code == 0 and quiet.output == ""


def test_bundled_demo_channel_is_what_the_generator_builds(tmp_path: Path) -> None:
    from tests.demo_channel import CONFIGS, build

    build(tmp_path / "demo-channel")
    for subdir in ("linux-64", "noarch"):
        committed = (CONFIGS / "demo-channel" / subdir / "repodata.json").read_bytes()
        assert (tmp_path / "demo-channel" / subdir / "repodata.json").read_bytes() == committed
