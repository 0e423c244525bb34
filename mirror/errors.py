"""Exit statuses that cron and monitoring read, and the errors that carry them.

The table below is the one place they are defined; ``ferry --help`` and the README
show it, and a test checks that they agree.
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
PARTIAL = 3
LOCKED = 75
HANGUP = 129
INTERRUPTED = 130
TERMINATED = 143

EXIT_CODES = {
    OK: "ok",
    FAILED: "failed",
    USAGE: "usage, configuration or credentials error",
    PARTIAL: "partial: named packages failed, everything else was published",
    LOCKED: "the target is locked by another run",
    HANGUP: "stopped by SIGHUP",
    INTERRUPTED: "interrupted (Ctrl-C, SIGINT)",
    TERMINATED: "stopped by SIGTERM",
}


class FerryError(Exception):
    """A failure the user can act on; its text is one line, its code the exit status."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(FerryError):
    def __init__(self, message: str) -> None:
        super().__init__(message, USAGE)


class Stopped(BaseException):
    """A signal asked the run to stop: it unwinds like Ctrl-C (locks released, temp
    files removed by their writers) and exits with 128 + the signal's number."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(what)
        self.code = code
