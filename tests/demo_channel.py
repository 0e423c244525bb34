"""Rebuild configs/demo-channel, the bundled example upstream, from the generator:

    .venv/bin/python -m tests.demo_channel

The packages come from the tests' own generator (``tests/pkgmaker.py``) and are
indexed by ferry's indexer, so the demo needs no network at all. A test checks that
the committed channel is what this builds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conda_ferry.gateways import open_gateway
from conda_ferry.index.channel import IndexOptions, index_channel
from tests.pkgmaker import DEMO, write_package

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def build(root: Path) -> None:
    """The demo channel at ``root``: packages, then their index."""
    shutil.rmtree(root, ignore_errors=True)
    for spec, fmt in DEMO:
        write_package(root, spec, fmt)
    cache = root.parent / f".{root.name}-cache"
    with open_gateway(str(root)) as gateway:
        index_channel(
            gateway, IndexOptions(subdirs=["linux-64", "noarch"], jobs=2, cache_dir=cache)
        )
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    build(CONFIGS / "demo-channel")
    print(f"built {CONFIGS / 'demo-channel'}")
