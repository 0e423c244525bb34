"""Exit codes, documented in the README and ``ferry --help``, that cron and monitoring read."""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
PARTIAL = 3
LOCKED = 75
INTERRUPTED = 130


class FerryError(Exception):
    """A failure the user can act on; its text is one line, its code the exit status."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(FerryError):
    def __init__(self, message: str) -> None:
        super().__init__(message, USAGE)
