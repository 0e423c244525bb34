"""An upstream channel for sync tests: generated packages, indexed, editable by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zstandard

from gateways import open_gateway
from index.channel import IndexOptions, index_channel
from index.pkgmaker import Spec, write_package
from index.publish import OutputOptions

SPECS = [
    (
        Spec(
            "zlib", "1.2.13", "h0_0", subdir="linux-64", license="Zlib", timestamp=1_690_000_000_000
        ),
        ".tar.bz2",
    ),
    (
        Spec(
            "zlib", "1.3.1", "h0_0", subdir="linux-64", license="Zlib", timestamp=1_710_000_000_000
        ),
        ".conda",
    ),
    (
        Spec(
            "libpng",
            "1.6.43",
            "h1_0",
            subdir="linux-64",
            license="Zlib",
            depends=["zlib >=1.3"],
            timestamp=1_710_000_000_000,
        ),
        ".conda",
    ),
    (
        Spec(
            "pngtool",
            "2.0",
            "h2_0",
            subdir="linux-64",
            license="MIT",
            depends=["libpng >=1.6", "data"],
            timestamp=1_711_000_000_000,
        ),
        ".conda",
    ),
    (
        Spec(
            "pngtool",
            "1.0",
            "h2_0",
            subdir="linux-64",
            license="MIT",
            depends=["libpng"],
            timestamp=1_700_000_000_000,
        ),
        ".tar.bz2",
    ),
    (
        Spec(
            "gpltool",
            "1.0",
            "h3_0",
            subdir="linux-64",
            license="GPL-3.0-only",
            timestamp=1_712_000_000_000,
        ),
        ".conda",
    ),
    (
        Spec(
            "data", "2024.1", "0", noarch="generic", license="CC0-1.0", timestamp=1_705_000_000_000
        ),
        ".conda",
    ),
    (
        Spec(
            "data-dbg",
            "2024.1",
            "0",
            noarch="generic",
            license="CC0-1.0",
            timestamp=1_705_000_000_000,
        ),
        ".conda",
    ),
]


def build_upstream(root: Path, extra: list[tuple[Spec, str]] | None = None) -> None:
    for spec, fmt in SPECS + (extra or []):
        write_package(root, spec, fmt)
    reindex(root)


def reindex(root: Path) -> None:
    with open_gateway(str(root)) as gateway:
        index_channel(
            gateway,
            IndexOptions(
                subdirs=["linux-64", "noarch"],
                jobs=2,
                cache_dir=root / ".cache",
                channeldata=False,
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
