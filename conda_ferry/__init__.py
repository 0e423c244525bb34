"""conda-ferry: mirror conda channels across air gaps and publish custom channels."""

import os
from pathlib import Path

# Also pyproject.toml's; a test keeps the two equal. Read from here, the version
# costs no importlib.metadata (45 ms of every start).
__version__ = "0.1.0"


def cache_home() -> Path:
    """Where ferry keeps what it can make again (index caches, parsed job files)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "conda-ferry"
