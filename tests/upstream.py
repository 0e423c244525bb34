"""An upstream channel for sync tests: generated packages, indexed, editable by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zstandard

from conda_ferry.gateways import open_gateway
from conda_ferry.index.channel import IndexOptions, index_channel
from conda_ferry.index.publish import OutputOptions
from tests.pkgmaker import DEMO, Spec, write_package

SPECS = DEMO


def build_upstream(
    root: Path, extra: list[tuple[Spec, str]] | None = None, channeldata: bool = False
) -> None:
    for spec, fmt in SPECS + (extra or []):
        write_package(root, spec, fmt)
    reindex(root, channeldata)


def reindex(root: Path, channeldata: bool = False) -> None:
    with open_gateway(str(root)) as gateway:
        index_channel(
            gateway,
            IndexOptions(
                subdirs=["linux-64", "noarch"],
                jobs=2,
                cache_dir=root / ".cache",
                channeldata=channeldata,
                outputs=OutputOptions(jlap=False, shards=False),
            ),
        )


def edit_repodata(root: Path, subdir: str, edit: Any) -> None:
    """Change upstream's repodata by hand, as a hot-fix would (packages untouched)."""
    path = root / subdir / "repodata.json"
    document = json.loads(path.read_bytes())
    edit(document)
    data = json.dumps(document, indent=2, sort_keys=True).encode()
    path.write_bytes(data)
    (root / subdir / "repodata.json.zst").write_bytes(zstandard.compress(data))


def job_yaml(path: Path, source: str, target: str, extra: str = "") -> Path:
    path.write_text(f"source: {source}\ntarget: {target}\nsubdirs: [linux-64, noarch]\n{extra}")
    return path
