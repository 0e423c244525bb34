"""Small helpers shared by the tests: running the CLI, building channels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from conda_ferry.index import repodata
from conda_ferry.mirror.cli import main
from tests.pkgmaker import Spec, write_package


def ferry(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_bytes()))


def records(source: Path | bytes) -> dict[str, Any]:
    """Every record of a repodata.json (its path, or its bytes), both sections."""
    data = source if isinstance(source, bytes) else source.read_bytes()
    return repodata.records(json.loads(data))


def small_channel(root: Path, count: int = 4, subdir: str = "linux-64") -> list[Path]:
    """A channel with a little dependency graph in both formats."""
    made = [
        write_package(
            root,
            Spec("libzed", "1.0", "h0_0", subdir=subdir, run_exports={"weak": ["libzed >=1.0"]}),
        ),
        write_package(root, Spec("libzed", "1.1", "h0_0", subdir=subdir)),
        write_package(
            root, Spec("app", "2.0", "h1_0", subdir=subdir, depends=["libzed >=1.1"]), ".tar.bz2"
        ),
        write_package(root, Spec("pyutil", "0.5", "pyh_0", noarch="generic", depends=["app"])),
    ]
    return made[:count]
