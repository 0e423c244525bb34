"""Progress on a terminal (rich bars), timestamped log lines under cron."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from .units import human_size, plural

log = logging.getLogger("ferry.sync")


class Progress:
    """Plain log lines, at most one every ``interval`` seconds: cron mail stays short."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._done_bytes = 0
        self._total_bytes = 0
        self._files = 0
        self._total_files = 0
        self._subdir = ""
        self._last = 0.0

    def start(self, subdir: str, files: int, total_bytes: int) -> None:
        self._subdir, self._total_files, self._total_bytes = subdir, files, total_bytes
        self._done_bytes = self._files = 0
        self._last = time.monotonic()
        if files:
            log.info(
                "%s: transferring %s, %s", subdir, plural(files, "file"), human_size(total_bytes)
            )

    def advance(self, count: int) -> None:
        with self._lock:
            self._done_bytes += count
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                log.info(
                    "%s: %d/%s, %s/%s",
                    self._subdir,
                    self._files,
                    plural(self._total_files, "file"),
                    human_size(self._done_bytes),
                    human_size(self._total_bytes),
                )

    def file_done(self, filename: str, ok: bool) -> None:
        with self._lock:
            self._files += 1

    def close(self) -> None:
        """Nothing to tear down for log lines."""


class RichProgress(Progress):
    def __init__(self) -> None:
        super().__init__()
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bars

        self._bars = Bars(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bars.start()
        self._task: Any = None

    def start(self, subdir: str, files: int, total_bytes: int) -> None:
        super().start(subdir, files, total_bytes)
        self._task = self._bars.add_task(f"{subdir} 0/{files} files", total=total_bytes)

    def advance(self, count: int) -> None:
        self._bars.advance(self._task, count)

    def file_done(self, filename: str, ok: bool) -> None:
        super().file_done(filename, ok)
        self._bars.update(
            self._task, description=f"{self._subdir} {self._files}/{self._total_files} files"
        )

    def close(self) -> None:
        self._bars.stop()


def make_progress(quiet: bool) -> Progress:
    return RichProgress() if sys.stderr.isatty() and not quiet else Progress()
