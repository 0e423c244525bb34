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
from index.pkgmaker import DEMO, write_package

ROOT = Path(__file__).resolve().parent / "demo-channel"


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    for spec, fmt in DEMO:
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
