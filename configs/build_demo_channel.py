"""Rebuild configs/demo-channel: a small upstream channel of valid packages.

    .venv/bin/python configs/build_demo_channel.py

The packages come from conda-ferry's own generator (index/pkgmaker.py) and the
channel is indexed by ``ferry index``, so the demo needs no network at all.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateways import open_gateway
from index.channel import IndexOptions, index_channel
from index.pkgmaker import Spec, write_package

ROOT = Path(__file__).resolve().parent / "demo-channel"
DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01

PACKAGES = [
    (
        Spec(
            "zlib",
            "1.2.13",
            "h0_0",
            subdir="linux-64",
            license="Zlib",
            timestamp=T0 - 400 * DAY,
            run_exports={"weak": ["zlib >=1.2.13,<1.3.0a0"]},
        ),
        ".tar.bz2",
    ),
    (
        Spec(
            "zlib",
            "1.3.1",
            "h0_0",
            subdir="linux-64",
            license="Zlib",
            timestamp=T0 + 30 * DAY,
            run_exports={"weak": ["zlib >=1.3.1,<1.4.0a0"]},
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
            depends=["zlib >=1.3.1,<1.4.0a0"],
            timestamp=T0 + 40 * DAY,
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
            depends=["libpng >=1.6", "demo-data"],
            timestamp=T0 + 50 * DAY,
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
            depends=["libpng >=1.6"],
            timestamp=T0 - 10 * DAY,
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
            timestamp=T0 + 60 * DAY,
        ),
        ".conda",
    ),
    (
        Spec(
            "demo-data", "2024.1", "0", noarch="generic", license="CC0-1.0", timestamp=T0 + 20 * DAY
        ),
        ".conda",
    ),
    (
        Spec(
            "demo-data-dbg",
            "2024.1",
            "0",
            noarch="generic",
            license="CC0-1.0",
            timestamp=T0 + 20 * DAY,
        ),
        ".conda",
    ),
]


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    for spec, fmt in PACKAGES:
        write_package(ROOT, spec, fmt)
    with open_gateway(str(ROOT)) as gateway:
        index_channel(
            gateway,
            IndexOptions(
                subdirs=["linux-64", "noarch"], jobs=2, cache_dir=ROOT.parent / ".demo-cache"
            ),
        )
    shutil.rmtree(ROOT.parent / ".demo-cache", ignore_errors=True)
    print(f"built {ROOT}")


if __name__ == "__main__":
    main()
