"""conda-ferry: mirror conda channels across air gaps and publish custom channels."""

# Also pyproject.toml's; a test keeps the two equal. Read from here, the version
# costs no importlib.metadata (45 ms of every start).
__version__ = "0.1.0"
