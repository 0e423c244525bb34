"""py-rattler 0.22.0, the last release whose fetch_repo_data reads JLAP, in its own venv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

VERSION = "0.22.0"


def old_rattler_python() -> str:
    """The venv's python, made once per machine; skips the test if it cannot be installed."""
    # Under the real home, not the per-test XDG_CACHE_HOME: made once per machine.
    venv = Path.home() / ".cache" / "conda-ferry-tests" / f"py-rattler-{VERSION}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"py-rattler=={VERSION}"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.skip(f"py-rattler {VERSION} cannot be installed: {done.stderr[-300:]}")
        marker.touch()
    return str(python)


def old_fetch(python: str, url: str, cache: Path) -> dict[str, Any]:
    """What py-rattler 0.22.0 fetches of ``url``'s linux-64 (see oldrattler_fetch.py)."""
    script = Path(__file__).with_name("oldrattler_fetch.py")
    for _ in range(3):
        out = subprocess.run(
            [python, str(script), url, str(cache)], capture_output=True, text=True, timeout=120
        )
        lines = out.stdout.strip().splitlines()
        if lines and lines[-1].startswith("{"):
            # 0.22.0 now and then crashes while its runtime shuts down, after the work
            return dict(json.loads(lines[-1]))
    raise AssertionError(f"py-rattler {VERSION} failed ({out.returncode}): {out.stderr[-2000:]}")
