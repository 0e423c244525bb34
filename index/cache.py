"""A per-channel SQLite cache of what each package file yielded.

Keyed by file name, size and the storage's validator (ETag, or mtime), so that a
re-index reads only new or changed packages. It is only ever a shortcut: delete it
and the next run reads every package again and writes the same bytes; so a damaged
one (a row that is no record, a page the database cannot read) is dropped, not
trusted and never fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson

from conda_ferry import cache_home
from conda_ferry.gateways import UsageError

from .records import Entry, record_problem


def default_dir() -> Path:
    return cache_home() / "index"


class IndexCache:
    def __init__(self, channel_url: str, directory: Path | None = None) -> None:
        directory = directory or default_dir()
        # a path's bytes, those that are no text too (as the command line gave them)
        key = hashlib.sha256(channel_url.encode("utf-8", "surrogateescape")).hexdigest()[:20]
        self.path = directory / f"{key}.sqlite"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._open()
            except sqlite3.DatabaseError:
                self._db = self._cold()
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(
                str(directory),
                f"cannot keep the index cache here: {getattr(exc, 'strerror', None) or exc}",
                "give --cache-dir a writable directory, or set XDG_CACHE_HOME",
            ) from None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS packages (subdir TEXT, filename TEXT, size INTEGER,"
                " stamp TEXT, record BLOB, extras BLOB, PRIMARY KEY (subdir, filename))"
            )
        except BaseException:
            db.close()
            raise
        return db

    def _cold(self) -> sqlite3.Connection:
        """A damaged cache is just a cold cache (its log goes with it)."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        return self._open()

    @contextlib.contextmanager
    def _or_cold(self) -> Iterator[None]:
        """A damaged database found in use: dropped, and the run goes on without it."""
        try:
            yield
        except sqlite3.DatabaseError:
            self._db.close()
            self._db = self._cold()

    def load(self, subdir: str) -> dict[str, tuple[int, str, Entry]]:
        """What the subdir's packages yielded; a row that does not read back as a
        record (a damaged cache) is left out, and its package read again."""
        rows = []
        with self._or_cold():
            rows = self._db.execute(
                "SELECT filename, size, stamp, record, extras FROM packages WHERE subdir = ?",
                (subdir,),
            ).fetchall()
        found: dict[str, tuple[int, str, Entry]] = {}
        for name, size, stamp, record, extras in rows:
            try:
                entry = Entry(orjson.loads(record), orjson.loads(extras))
            except (orjson.JSONDecodeError, TypeError):
                continue
            if (
                isinstance(size, int)
                and isinstance(stamp, str)
                and isinstance(entry.extras, dict)
                and record_problem(entry.record) is None
            ):
                found[name] = (size, stamp, entry)
        return found

    def store(self, subdir: str, items: list[tuple[str, int, str, Entry]]) -> None:
        with self._or_cold(), self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO packages VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (subdir, name, size, stamp, orjson.dumps(e.record), orjson.dumps(e.extras))
                    for name, size, stamp, e in items
                ],
            )

    def forget(self, subdir: str, names: list[str]) -> None:
        with self._or_cold(), self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "DELETE FROM packages WHERE subdir = ? AND filename = ?",
                [(subdir, name) for name in names],
            )

    def close(self) -> None:
        self._db.close()
