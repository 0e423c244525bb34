"""The local file system: the target of most mirrors, and the model for the rest."""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from .base import FileInfo, Gateway, GatewayOptions, is_temp, stat_etag, temp_name
from .errors import NotFound, PermissionDenied, ProtocolError
from .streams import CHUNK
from .urls import parse

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
# an unnamed file, linked into place through /proc (Linux); 0 where there is neither
_UNNAMED = (
    os.O_WRONLY | os.O_TMPFILE if hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd") else 0
)
_NO_UNNAMED = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}  # not on this file system
FSYNC_AT_MOST = 64  # files a flush makes durable one by one; beyond, one sync
# A file this large starts for the disk as soon as it is written, while the next ones
# download: the flush before publishing then waits for the last few, not for all.
EARLY_FSYNC = 4 << 20


def _umask_keeps_644() -> bool:
    """Whether files created 0o644 keep that mode under this process's umask (read
    where Linux shows it; elsewhere assumed not, and every file is chmod-ed)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o644 == 0
    except (OSError, ValueError, IndexError):
        pass
    return False


_UMASK_KEEPS_644 = _umask_keeps_644()


class _Errors:
    """OSError as the gateway error that names the path (a class, not a generator:
    it wraps every file operation)."""

    def __init__(self, gateway: LocalGateway, path: str) -> None:
        self._gateway, self._path = gateway, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None or not isinstance(exc, OSError):
            return
        where = self._gateway.display(self._path)
        if isinstance(exc, FileNotFoundError):
            raise NotFound(where, "no such file or directory") from None
        if isinstance(exc, PermissionError):
            raise PermissionDenied(where, "permission denied") from None
        if isinstance(exc, NotADirectoryError):
            raise NotFound(where, "a parent is not a directory") from None
        hint = _HINTS.get(exc.errno or 0, "check the path and its file system")
        raise ProtocolError(where, exc.strerror or str(exc), hint) from None


_HINTS = {
    errno.ENOSPC: "free some space",
    errno.EISDIR: "a directory is in the way: give a file's path",
    errno.ENAMETOOLONG: "give a shorter path",
    errno.EROFS: "the file system is mounted read-only",
}


class LocalGateway(Gateway):
    scheme = "file"

    def __init__(self, url: str, options: GatewayOptions | None = None) -> None:
        super().__init__(url, options)
        self.root = Path(parse(url).path).expanduser().absolute()
        self._root = str(self.root).rstrip("/")  # "" for the file system's root
        self._unflushed: list[str] = []  # written with durable=False, since the last flush
        self._syncing: list[tuple[str, Future[None]]] = []  # large ones, fsynced already
        self._syncer: ThreadPoolExecutor | None = None
        self._unnamed = _UNNAMED != 0

    def _abs(self, path: str) -> Path:
        rel = self._rel(path)
        return self.root / rel if rel else self.root

    def _errors(self, path: str) -> _Errors:
        return _Errors(self, path)

    def _info(self, rel: str, st: os.stat_result, is_dir: bool) -> FileInfo:
        return FileInfo(rel, st.st_size, st.st_mtime, stat_etag(st.st_size, st.st_mtime), is_dir)

    def info(self, path: str) -> FileInfo:
        with self._errors(path):
            st = self._abs(path).stat()
        return self._info(self._rel(path), st, stat.S_ISDIR(st.st_mode))

    def _listdir(self, path: str) -> list[FileInfo]:
        directory, prefix = self._abs(path), self._rel(path)
        with self._errors(path):
            if not directory.is_dir():
                raise NotFound(self.display(path), "not a directory")
            with os.scandir(directory) as entries:
                return [
                    self._info(
                        f"{prefix}/{entry.name}" if prefix else entry.name,
                        entry.stat(follow_symlinks=False),
                        entry.is_dir(follow_symlinks=False),
                    )
                    for entry in entries
                ]

    def names(self, path: str = "") -> list[str]:
        """Without a stat each (the directory entry says what is a directory): a
        commit's look at its thousands of shards and pages took 5 µs a file so."""
        directory = self._abs(path)
        with self._errors(path):
            try:
                with os.scandir(directory) as entries:
                    return sorted(e.name for e in entries if not e.is_dir(follow_symlinks=False))
            except (FileNotFoundError, NotADirectoryError):
                return []

    def _open(self, path: str, offset: int, version: str | None) -> tuple[BinaryIO, str | None]:
        with self._errors(path):
            handle = open(self._abs(path), "rb")  # noqa: SIM115 - returned to the caller
            if offset:
                handle.seek(offset)
            return handle, None

    def open_read(self, path: str, offset: int = 0) -> BinaryIO:
        return self._open(path, offset, None)[0]  # a local read has nothing to resume

    def write_atomic(self, path: str, stream: BinaryIO, durable: bool = True) -> FileInfo:
        return self._write(path, iter(functools.partial(stream.read, CHUNK), b""), durable)

    def write_bytes(self, path: str, data: bytes, durable: bool = True) -> FileInfo:
        return self._write(path, (data,), durable)

    def _write(self, path: str, chunks: Iterable[bytes], durable: bool) -> FileInfo:
        """A new file's bytes, then its name; plain descriptor calls, as few as it
        takes: this runs once per package, shard and page, thousands of times a run."""
        rel = self._rel(path)
        target = f"{self._root}/{rel}"
        parent, _, name = target.rpartition("/")
        with self._errors(path):
            fd, tmp = self._new_file(parent, name)
            try:
                try:
                    for chunk in chunks:
                        _write_all(fd, chunk)
                    if durable:
                        os.fsync(fd)
                    if not _UMASK_KEEPS_644:
                        os.fchmod(fd, 0o644)  # servable whatever the umask
                    st = os.fstat(fd)
                    if not tmp:
                        tmp = _link_into_place(fd, parent, name)
                finally:
                    os.close(fd)
                if tmp:
                    os.replace(tmp, target)
            except BaseException:
                if tmp:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                raise
            if durable:
                _fsync_dir(parent)
            elif st.st_size >= EARLY_FSYNC:
                if self._syncer is None:
                    self._syncer = ThreadPoolExecutor(2, thread_name_prefix="ferry-fsync")
                self._syncing.append((target, self._syncer.submit(_fsync_file, target)))
            else:
                self._unflushed.append(target)
        return self._info(rel, st, False)

    def _new_file(self, parent: str, name: str) -> tuple[int, str]:
        """A file without a name in ``parent`` where Linux makes one (its path is then
        ""), else a temp file beside the target. An unnamed file appears whole at its
        name or never, so a run killed mid-write leaves nothing behind, and linking it
        is one change to the directory where a temp costs two, a create and a rename
        (measured on ext4: 2,000 small files in 25-40 % less time)."""
        for first in (True, False):
            try:
                fd = self._open_unnamed(parent)
                if fd is not None:
                    return fd, ""
                tmp = f"{parent}/{temp_name(name)}"
                return os.open(tmp, _CREATE, 0o644), tmp
            except FileNotFoundError:
                if not first:
                    raise
                os.makedirs(parent, exist_ok=True)  # the first file of a new directory
        raise AssertionError("unreachable")

    def _open_unnamed(self, parent: str) -> int | None:
        """An unnamed file in ``parent``; None where this file system makes none."""
        if self._unnamed:
            try:
                return os.open(parent, _UNNAMED, 0o644)
            except OSError as exc:
                if exc.errno not in _NO_UNNAMED:
                    raise
                self._unnamed = False
        return None

    def write_many(
        self, files: Iterable[tuple[str, bytes]], jobs: int = 8, unseen: bool = False
    ) -> list[str]:
        """One after another: creating a local file is work for the kernel, not a wait,
        and threads creating files side by side only contend (measured: 2,000 small
        files took from 1.1 to 6 times as long with 4 or 8 threads as with one). Each
        directory is opened once for all its files, each created unnamed in it, filled
        and linked: four calls a file, and no path looked up again (measured: half the
        time of one :meth:`write_bytes` per file); ``unseen`` (a staging directory's
        files), each created under its name and filled: three calls, and a cheaper
        create (9 µs a file against 14 on tmpfs). Files are taken from ``files`` a
        run at a time before any is written: making a file (rendering a page) and
        writing it in turn, file by file, measured a third slower than in runs, the
        interpreter's work and the kernel's evicting each other from the CPU's caches."""
        done: list[str] = []
        directories: dict[str, int] = {}
        write = _create_at if unseen else _write_unnamed_at
        try:
            for path, data in itertools.chain.from_iterable(_runs(files)):
                rel = self._rel(path)
                parent, _, name = f"{self._root}/{rel}".rpartition("/")
                with self._errors(path):
                    directory = directories.get(parent)
                    if directory is None and (unseen or self._unnamed):
                        directory = directories[parent] = self._open_directory(parent)
                    if directory is None or not write(directory, name, data):
                        if not unseen:  # else the name was taken: replaced whole
                            self._unnamed = False  # not on this file system
                        self._write(path, (data,), durable=False)
                        done.append(path)
                        continue
                self._unflushed.append(f"{parent}/{name}")
                done.append(path)
        finally:
            for directory in directories.values():
                os.close(directory)
        return done

    def staging_directory(self, path: str) -> str | None:
        rel = self._rel(path)
        parent, _, name = f"{self._root}/{rel}".rpartition("/")
        with self._errors(path):
            try:
                if os.listdir(f"{parent}/{name}"):
                    return None  # something (not of ours) is there: written in place
            except FileNotFoundError:
                pass
            except NotADirectoryError:
                return None  # a file in the way: named where it fails
            os.makedirs(parent, exist_ok=True)
            with os.scandir(parent) as entries:  # what a killed run staged for it
                left = [
                    e.path
                    for e in entries
                    if e.name.startswith(f".{name}.")
                    and is_temp(e.name)
                    and e.is_dir(follow_symlinks=False)
                ]
            if left:
                import shutil  # with the compressors it loads: not on every start-up

                for stale in left:
                    shutil.rmtree(stale)
            staging = temp_name(rel)
            os.mkdir(f"{self._root}/{staging}")
        return staging

    def publish_directory(self, staging: str, path: str) -> None:
        target = f"{self._root}/{self._rel(path)}"
        with self._errors(path):
            os.rename(f"{self._root}/{self._rel(staging)}", target)  # over an empty one
            _fsync_dir(os.path.dirname(target))

    @staticmethod
    def _open_directory(path: str) -> int:
        try:
            return _open_dir(path)
        except FileNotFoundError:
            os.makedirs(path, exist_ok=True)  # the first file of a new directory
            return _open_dir(path)

    def free_space(self, path: str = "") -> int | None:
        where = self._abs(path)
        while not where.exists() and where != where.parent:
            where = where.parent  # a target not created yet: its nearest ancestor
        return _free_bytes(str(where))

    def flush(self) -> None:
        """Exactly this run's files where they are few (a sync would also wait for
        every other process's writes); one sync for thousands of small files, which
        beats as many fsyncs by far. Large files were sent on their way as written."""
        files, self._unflushed = self._unflushed, []
        early, self._syncing = self._syncing, []
        for _, started in early:
            started.result()
        if len(files) > FSYNC_AT_MOST:
            _sync_file_system(str(self.root))  # every file and directory
            return
        if files:
            with ThreadPoolExecutor(max_workers=8) as pool:  # the disk merges them
                list(pool.map(_fsync_file, files))
        for directory in sorted({os.path.dirname(f) for f in files + [p for p, _ in early]}):
            _fsync_dir(directory)

    def note_written(self, paths: Iterable[str]) -> None:
        root = self._root  # a string joined, not a Path made: thousands a run
        self._unflushed.extend(f"{root}/{self._rel(p)}" for p in paths)

    def close(self) -> None:
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None
        super().close()

    def delete(self, path: str) -> None:
        with contextlib.suppress(NotFound), self._errors(path):
            self._abs(path).unlink()

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """The file appears with ``data`` or not at all, where Linux can link an unnamed
        file into place: a run killed between creating a lock and filling it would
        otherwise leave a lock nobody can read, and every run would wait it out."""
        target = self._abs(path)
        parent = str(target.parent)
        with self._errors(path):
            os.makedirs(parent, exist_ok=True)
            fd = self._open_unnamed(parent)
            if fd is None:  # no unnamed files here: the name is created, then filled
                return _create_then_fill(target, data)
            try:
                _write_all(fd, data)
                os.fsync(fd)
                directory = _open_dir(parent)
                try:
                    _link_at(fd, directory, target.name)
                finally:
                    os.close(directory)
            except FileExistsError:
                return False
            finally:
                os.close(fd)
            _fsync_dir(parent)
        return True


def _free_bytes(path: str) -> int:
    """shutil.disk_usage's free bytes, without the compressors shutil imports."""
    if not hasattr(os, "statvfs"):  # Windows
        import shutil

        return shutil.disk_usage(path).free
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def _link_into_place(fd: int, parent: str, name: str) -> str:
    """Give the unnamed file ``fd`` its name in ``parent``; where that name is taken,
    a temp name instead, returned, for the caller to rename over it."""
    directory = _open_dir(parent)
    try:
        tmp = _link_or_temp(fd, directory, name)
    finally:
        os.close(directory)
    return f"{parent}/{tmp}" if tmp else ""


def _link_or_temp(fd: int, directory: int, name: str) -> str:
    """Link the unnamed file ``fd`` as ``name`` in the open ``directory``; where that
    name is taken, as a temp name instead, returned for the caller to rename."""
    try:
        _link_at(fd, directory, name)
        return ""
    except FileExistsError:
        tmp = temp_name(name)
        _link_at(fd, directory, tmp)
        return tmp


def _link_at(fd: int, directory: int, name: str) -> None:
    """Link the unnamed file ``fd`` as ``name`` in the open ``directory``
    (FileExistsError if taken); linkat follows /proc's link to the file."""
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=directory)


def _runs(
    files: Iterable[tuple[str, bytes]], count: int = 64, size: int = 4 << 20
) -> Iterator[list[tuple[str, bytes]]]:
    """``files`` in lists of at most ``count`` files, or about ``size`` bytes."""
    run: list[tuple[str, bytes]] = []
    held = 0
    for path, data in files:
        run.append((path, data))
        held += len(data)
        if len(run) >= count or held >= size:
            yield run
            run, held = [], 0
    if run:
        yield run


def _write_unnamed_at(directory: int, name: str, data: bytes) -> bool:
    """``data`` as ``name`` in the open ``directory``, whole or not at all (an old
    file of that name replaced); False where this file system makes no unnamed file."""
    try:
        fd = os.open(".", _UNNAMED, 0o644, dir_fd=directory)
    except OSError as exc:
        if exc.errno in _NO_UNNAMED:
            return False
        raise
    try:
        _write_all(fd, data)
        if not _UMASK_KEEPS_644:
            os.fchmod(fd, 0o644)  # servable whatever the umask
        tmp = _link_or_temp(fd, directory, name)
    finally:
        os.close(fd)
    if tmp:
        try:
            os.replace(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=directory)
            raise
    return True


def _create_at(directory: int, name: str, data: bytes) -> bool:
    """``data`` as a new file ``name`` in the open ``directory``, which no reader sees
    yet; False if that name is taken (the caller writes it the atomic way)."""
    try:
        fd = os.open(name, _CREATE | os.O_CLOEXEC, 0o644, dir_fd=directory)
    except FileExistsError:
        return False
    try:
        _write_all(fd, data)
        if not _UMASK_KEEPS_644:
            os.fchmod(fd, 0o644)  # servable whatever the umask
    finally:
        os.close(fd)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create_then_fill(target: Path, data: bytes) -> bool:
    try:
        fd = os.open(target, _CREATE, 0o644)
    except FileExistsError:
        return False
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


@functools.cache
def _syncfs() -> Any:
    """libc's syncfs(2), or None where there is none (it is Linux's)."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None


def _sync_file_system(path: str) -> None:
    """Write back the file system that holds ``path``: only that one where the system
    can (on a shared server, sync(2) would also wait for every other disk's writes),
    else all of them."""
    syncfs = _syncfs()
    with contextlib.suppress(OSError):  # the root unopenable: all of them
        fd = os.open(path, os.O_RDONLY)
        try:
            if syncfs is not None and syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


def _fsync_file(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # replaced or deleted since: nothing of ours to keep
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
    """Make a rename durable: a power cut must not undo a published file."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
