"""Worker processes that copy a run's large transfers, one per core.

A transfer costs one core's Python per file (libcurl's callbacks, the digest, the
file's creation) and per byte (hashing, writing). Threads do not share that work: the
interpreter lock changes hands at every file (measured: slower, not faster). So a
large transfer is copied by worker processes, each running the same
:func:`~conda_ferry.mirror.copying.copy_all` over its own connections and writes,
while this process only hands out files and hears what landed. Files are handed out
a few at a time, as each worker is ready for more, so that none idles while another
has a queue (a slow mirror of the upstream, a file retried).

Workers are forked when a run starts, on Linux, if the process has no other thread
yet (a fork is ready in a millisecond with every module loaded, and unused, it ends
as fast). Where forking is unsafe (a progress bar's thread is about; macOS's system
libraries), they are started as fresh interpreters (``python -m
conda_ferry.mirror.copiers``) when first needed.

This process alone journals, reports progress and decides what is published; its
next flush makes the workers' files durable too (``note_written``), so the journal
still vouches only for durable bytes. A worker's log lines are logged here. Stopped
(Ctrl-C, SIGTERM), this process stops its workers, whose copies in flight are
abandoned and their temp files removed, as in one process; killed outright, its
workers are stopped by the kernel (``PR_SET_PDEATHSIG``) and the next run sweeps what
they left. A worker that dies on its own costs time, not files: what it had not
reported is handed to the others, or copied here.

Between transfers a worker also does jobs aside (:meth:`Helpers.aside`): parts of a
commit's shards and package pages, written while this process publishes the
repodata. Each waits in its worker's input until the one before it is done.
"""

from __future__ import annotations

import contextlib
import ctypes  # here, not in each worker: imported once before the fork (4 ms a process)
import fcntl  # Linux's, as forking workers is
import functools
import logging
import os
import pickle
import select
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import IO, Any, TypeVar, cast

import msgspec

from conda_ferry.gateways import Copied, FileInfo, Gateway, GatewayOptions, open_gateway
from conda_ferry.index.compact import fields

from .copying import Failed, Landed, Route, Work, copy_all
from .progress import Progress

log = logging.getLogger("ferry.sync")
T = TypeVar("T")

WORTH_FILES = 200  # fewer files and bytes than these are copied in this process
WORTH_BYTES = 32 << 20
QUEUED_FILES = 64  # a worker's queue of small files: enough that it never waits
QUEUED_BYTES = 64 << 20  # ... of large files: a few, so the last ones are shared
LANDED_BATCH = 32  # files a worker reports at once (a message per file costs here)
ADVANCE_EVERY = 1 << 20  # bytes a worker counts before it tells the progress bar
STOP_WAIT = 30.0  # seconds a stopped worker has to remove its temp files
# a worker's pipes: a commit's part of the records (350 kB for 1,600) goes into the
# pipe in one write, not 64 kB at a time as the worker unpickles the last; a part's
# result (150 kB for 800 names) too, and the worker goes on to its next job aside
# while this process still waits on another worker
PIPE_BYTES = 1 << 20
FRAME = struct.Struct("<I")  # each message: its length, then its pickle
EXPECTED = ("size", "sha256", "md5")  # what a worker is told of each file
STOPPING = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # each stops a worker as Ctrl-C


def send(stream: IO[bytes], *message: Any) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME.pack(len(data)) + data)
    stream.flush()


def receive(stream: IO[bytes]) -> tuple[Any, ...] | None:
    """The next message, or None at the end of the stream."""
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (length,) = FRAME.unpack(head)
    message: tuple[Any, ...] = pickle.loads(stream.read(length))
    return message


class Helpers:
    """``count`` worker processes for a run's transfers (none below 2: one process
    copies in itself), stopped when the run ends or stops. They copy transfers
    worth a process, or every transfer if ``always``."""

    def __init__(self, count: int, always: bool = False) -> None:
        self.count = count if count > 1 else 0
        self.always = always
        self._workers: list[_Worker] | None = None
        self._ending: list[_Worker] = []  # let go by finish(), not yet waited for

    def __enter__(self) -> Helpers:
        if self.count and threading.active_count() == 1 and sys.platform == "linux":
            self._workers = []
            for _ in range(self.count):
                self._workers.append(_Worker.forked(self._workers))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(stop=kind is not None)

    def worth(self, files: int, total: int) -> bool:
        alive = self._workers is None or any(w.alive for w in self._workers)
        big = self.always or files >= WORTH_FILES or total >= WORTH_BYTES
        return bool(self.count) and alive and big

    def share(
        self,
        route: Route,
        work: Work,
        jobs: int,
        progress: Progress,
        arrived: Landed,
        failed: Failed,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """Copy ``work`` in the workers; each file goes to ``arrived`` or ``failed``;
        ``meanwhile`` runs once each has its first files."""
        if self._workers is None:
            self._workers = [_Worker.spawned() for _ in range(self.count)]
        workers = [w for w in self._workers if w.alive]
        assert not any(w.asked for w in workers), "a transfer after jobs aside not heard"
        feed = _Feed(work, -(-jobs // max(1, len(workers))) + 1, workers)
        try:
            for i, worker in enumerate(workers):  # the jobs split among them
                worker.begin(route, max(1, (jobs + i) // len(workers)), len(workers))
            for worker in workers:
                feed.top_up(worker)
            if meanwhile is not None:
                meanwhile()
            _hear(workers, feed, route.target, progress, arrived, failed)
        except BaseException:
            self.close(stop=True)
            raise
        left = feed.rest()
        if left:  # the workers that could take these died or had ended
            copy_all(route, left, jobs, progress, arrived, failed)

    def aside(self, job: Callable[..., T], target: Gateway, *args: Any) -> Callable[[], T]:
        """``job(target, *args)`` started in a worker not in a transfer, on its own
        gateway to the same target; what is returned waits for its result. A worker
        with jobs aside takes more: each waits in its input until the one before is
        done (so the next subdir's parts start as soon as the last one's end), and
        the one with the fewest gets it. With no worker at hand (none forked, or all
        gone), the job runs when its result is asked for, as it does again here if
        the worker dies on it."""
        at_hand = [w for w in self._workers or () if w.alive and not w.busy]
        if not at_hand:
            return functools.partial(job, target, *args)  # as index.publish.when_asked
        worker = min(at_hand, key=lambda w: len(w.asked))
        asked = _Asked()
        worker.asked.append(asked)
        worker.send("call", job, target.url, target.options, args)

        def result() -> T:
            while not asked.heard:  # the worker's answers come in the order asked
                try:
                    outcome = worker.outcome()
                except BaseException:
                    self.close(stop=True)
                    raise
                if outcome is None:
                    worker.died()
                    for lost in worker.asked:  # each done here instead, when asked for
                        lost.heard = True
                    worker.asked.clear()
                    break
                heard = worker.asked.popleft()
                heard.heard, heard.outcome = True, outcome
            if asked.outcome is None:
                return job(target, *args)
            kind, value = asked.outcome
            if kind == "error":
                raise value
            return cast(T, value)

        return result

    def spare(self) -> int:
        """Workers at hand for jobs aside: alive, and not in a transfer."""
        return sum(1 for w in self._workers or () if w.alive and not w.busy)

    def alive(self) -> int:
        """Workers alive: those at hand for jobs aside once a transfer ends."""
        return sum(1 for w in self._workers or () if w.alive)

    def finish(self) -> None:
        """Let the workers end now (a process takes milliseconds to), while this one
        does its last work; what is asked of them later is done here."""
        for worker in self._workers or ():
            worker.end(stop=False)
        self._ending += self._workers or []
        self._workers = []

    def close(self, stop: bool = False) -> None:
        """Let the workers end (their input closed), or ``stop`` them at once."""
        workers, self._ending, self._workers = [*self._ending, *(self._workers or ())], [], []
        for worker in workers:
            worker.end(stop)
        for worker in workers:
            worker.wait()


def _hear(
    workers: list[_Worker],
    feed: _Feed,
    target: Gateway,
    progress: Progress,
    arrived: Landed,
    failed: Failed,
) -> None:
    """Hand each worker's reports on and its next files out, until all have ended."""
    with selectors.DefaultSelector() as selector:
        for worker in workers:
            selector.register(worker.output, selectors.EVENT_READ, worker)
        while selector.get_map():
            for key, _ in selector.select():
                worker = key.data
                data = os.read(key.fd, 1 << 16)
                for message in worker.messages(data):
                    _pass_on(message, worker, target, progress, arrived, failed)
                if data and worker.busy:
                    feed.top_up(worker)
                    continue
                selector.unregister(worker.output)
                if not data:  # it died: its files go to the others, or are copied here
                    worker.died()
                    feed.give_back(worker)
                    for other in workers:
                        if other.busy:
                            feed.top_up(other)


def _pass_on(
    message: tuple[Any, ...],
    worker: _Worker,
    target: Gateway,
    progress: Progress,
    arrived: Landed,
    failed: Failed,
) -> None:
    kind = message[0]
    if kind == "landed":
        if message[2]:
            progress.advance(message[2])
        landed = [(n, Copied(FileInfo(*info), size, sha)) for n, info, size, sha in message[1]]
        target.note_written([copied.info.path for _, copied in landed])  # with ours
        for name, copied in landed:
            worker.queued.pop(name, None)
            arrived(name, copied)
    elif kind == "failed":
        worker.queued.pop(message[1], None)
        failed(message[1], message[2])
    elif kind == "advance":
        progress.advance(message[1])
    elif kind == "log":
        _relog(message)
    elif kind == "end":
        worker.busy = False


def _relog(message: tuple[Any, ...]) -> None:
    """A worker's log line, logged here (so it is redacted and in the run's output)."""
    _, name, level, text = message
    logging.getLogger(name).log(level, "%s", text)


class _Feed:
    """The files not handed out yet. A worker gets its equal part of a small transfer
    (a worker given all three files of a subdir leaves the other idle), else at least
    ``window`` (the copies it keeps in flight, and the next)."""

    def __init__(self, work: Work, window: int, workers: list[_Worker]) -> None:
        self._left = deque(work)
        self._window = window
        self._workers = workers
        self._files = min(QUEUED_FILES, -(-len(self._left) // max(1, len(workers))))

    def top_up(self, worker: _Worker) -> None:
        """Enough files that ``worker`` need not wait for its next; once there are no
        more, every worker is told to finish its queue and end."""
        if worker.drained:
            return
        more: dict[str, dict[str, Any]] = {}
        queued_bytes = sum(int(r.get("size") or 0) for r in worker.queued.values())
        while self._left:
            count = len(worker.queued) + len(more)
            if count >= self._files or (count >= self._window and queued_bytes >= QUEUED_BYTES):
                break
            name, record = self._left.popleft()
            expect = more[name] = dict(zip(EXPECTED, fields(record, EXPECTED), strict=True))
            queued_bytes += int(expect["size"] or 0)
        if more:
            worker.queued.update(more)
            worker.send("files", more)
        if not self._left:  # each worker waits for its window of files, or this word
            for each in self._workers:
                if not each.drained:
                    each.drained = True
                    each.send("drain")

    def give_back(self, worker: _Worker) -> None:
        self._left.extendleft(sorted(worker.queued.items(), reverse=True))
        worker.queued = {}

    def rest(self) -> list[tuple[str, Any]]:
        return list(self._left)


class _Asked:
    """A job aside, until what it came to (None: its worker died) is heard."""

    heard = False
    outcome: tuple[str, Any] | None = None


class _Worker:
    """One worker process, and the files it has been handed and not yet reported."""

    def __init__(self, process: subprocess.Popen[bytes] | _Forked, to: IO[bytes], fro: IO[bytes]):
        self.process, self.input, self.output = process, to, fro
        self.alive = True
        self.busy = False  # in a transfer, not yet ended
        self.drained = False  # told there is nothing more in this transfer
        self.queued: dict[str, Any] = {}  # name -> record, handed out and not reported
        self.asked: deque[_Asked] = deque()  # jobs aside handed to it, not yet heard
        self._buffer = b""

    @classmethod
    def spawned(cls) -> _Worker:
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        return cls(process, process.stdin, process.stdout)

    @classmethod
    def forked(cls, siblings: list[_Worker]) -> _Worker:
        down, up = os.pipe(), os.pipe()
        with contextlib.suppress(OSError):  # a commit's records, and a part's result
            fcntl.fcntl(down[1], fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            fcntl.fcntl(up[1], fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        parent = os.getpid()
        # held until the worker has its own handlers: the parent's would unwind the
        # parent's code in the worker (and write its report)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the parent's code
            code = 1
            try:
                _stop_like_ctrl_c()
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                for fd in (down[1], up[0], *(f for w in siblings for f in w.fds())):
                    os.close(fd)  # a sibling's input held open here would never end
                os.dup2(2, 1)  # a stray print must not reach the parent's output
                _serve(parent, os.fdopen(down[0], "rb"), os.fdopen(up[1], "wb"))
                code = 0
            except KeyboardInterrupt:
                code = 130
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.close(down[0])
        os.close(up[1])
        return cls(_Forked(pid), os.fdopen(down[1], "wb"), os.fdopen(up[0], "rb"))

    def fds(self) -> tuple[int, int]:
        return self.input.fileno(), self.output.fileno()

    def send(self, *message: Any) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):  # died: _hear sees it
            send(self.input, *message)

    def begin(self, route: Route, jobs: int, of: int) -> None:
        """A transfer, ``jobs`` copies at a time; ``of`` workers share the rate cap."""

        def options(gateway: Gateway) -> GatewayOptions:
            return replace(gateway.options, max_rate=gateway.options.max_rate / of)

        self.busy, self.drained = True, False
        self.send(
            "route",
            *(route.source.url, options(route.source), route.source_dir),
            *(route.target.url, options(route.target), route.target_dir),
            jobs,
            logging.getLogger().getEffectiveLevel(),
        )

    def messages(self, data: bytes) -> Iterator[tuple[Any, ...]]:
        self._buffer += data
        while len(self._buffer) >= FRAME.size:
            (length,) = FRAME.unpack_from(self._buffer)
            end = FRAME.size + length
            if len(self._buffer) < end:
                return
            message = pickle.loads(self._buffer[FRAME.size : end])
            self._buffer = self._buffer[end:]
            yield message

    def outcome(self) -> tuple[str, Any] | None:
        """What the job it was given came to ("result" or "error", and the value),
        passing its log lines on; None if it died first. The answer to a job asked
        after this one may have come in the same read: it waits in the buffer."""
        data = b""
        while True:
            for message in self.messages(data):
                if message[0] == "log":
                    _relog(message)
                else:
                    return message[0], message[1]
            data = os.read(self.output.fileno(), 1 << 16)
            if not data:
                return None

    def died(self) -> None:
        self.wait()
        log.warning(
            "a worker ended early (exit status %s); what it had not finished goes to "
            "the other workers or is done by the main process",
            self.process.returncode,
        )
        self.busy = False

    def end(self, stop: bool) -> None:
        if stop:
            self.process.terminate()
        with contextlib.suppress(OSError):
            self.input.close()

    def wait(self) -> None:
        self.alive = False
        try:
            self.process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.close()


class _Forked:
    """What :class:`subprocess.Popen` offers, for a forked worker."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Woken as the worker ends where Linux gives a process a descriptor to wait
        on (every run waits for its workers to end), else polled."""
        if self.poll() is None:
            try:
                fd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):  # not Linux 5.3+: polled
                return self._poll_until(timeout)
            try:
                select.select([fd], [], [], timeout)
            finally:
                os.close(fd)
            if self.poll() is None:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def _poll_until(self, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            time.sleep(0.002)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


# -- the worker's side -------------------------------------------------------------


class _ToParent(Progress):
    """The worker's messages, whole frames from any thread. Landed files go in
    batches (a message per file costs the parent as much as the file) with the
    bytes counted since, at the latest before the worker waits for more work; each
    as plain values (a Struct pickles through a Python call: five times the time)."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__()
        self._stream = stream
        self._landed: list[tuple[str, tuple[Any, ...], int, str]] = []
        self._since = 0.0
        self._counted = 0

    def __call__(self, *message: Any) -> None:
        with self._lock:
            self._flush()
            send(self._stream, *message)

    def advance(self, count: int) -> None:
        with self._lock:
            self._counted += count
            if self._counted >= ADVANCE_EVERY:
                self._flush()

    def landed(self, name: str, copied: Copied) -> None:
        with self._lock:
            if not self._landed:
                self._since = time.monotonic()
            info = msgspec.structs.astuple(copied.info)
            self._landed.append((name, info, copied.size, copied.sha256))
            if len(self._landed) >= LANDED_BATCH or time.monotonic() - self._since > 0.05:
                self._flush()

    def failed(self, name: str, why: str) -> None:
        self("failed", name, why)

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        """One message: the files landed, with the bytes counted since the last."""
        if self._landed:
            send(self._stream, "landed", self._landed, self._counted)
            self._landed, self._counted = [], 0
        elif self._counted:
            send(self._stream, "advance", self._counted)
            self._counted = 0


class _LogToParent(logging.Handler):
    def __init__(self, parent: _ToParent) -> None:
        super().__init__()
        self._parent = parent

    def emit(self, record: logging.LogRecord) -> None:
        self._parent("log", record.name, record.levelno, record.getMessage())


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: copies abandoned, temps removed


def _stop_like_ctrl_c() -> None:
    for signum in STOPPING:
        signal.signal(signum, _stop)


def _serve(parent: int, inbox: IO[bytes], stream: IO[bytes]) -> None:
    """Copy what the parent hands out, route after route, and do the jobs it gives
    (``Helpers.aside``), until its input ends."""
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the parent
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        return
    to_parent = _ToParent(stream)
    root = logging.getLogger()
    root.handlers[:] = [_LogToParent(to_parent)]
    gateways: dict[tuple[str, bytes], Gateway] = {}

    def gateway(url: str, options: GatewayOptions) -> Gateway:
        key = (url, pickle.dumps(options))
        if key not in gateways:
            gateways[key] = open_gateway(url, options)
        return gateways[key]

    def files() -> Iterator[tuple[str, Any]]:
        while True:
            to_parent.flush()  # what landed is reported before waiting for more
            message = receive(inbox)
            if message is None or message[0] != "files":
                return
            yield from message[1].items()

    try:
        while (message := receive(inbox)) is not None:
            if message[0] == "call":
                _, job, url, options, args = message
                try:
                    value = job(gateway(url, options), *args)
                except Exception as exc:  # raised again in the parent
                    to_parent("error", _portable(exc))
                else:
                    to_parent("result", value)
                continue
            _, source_url, source_options, source_dir, target_url, target_options = message[:6]
            target_dir, jobs, level = message[6:]
            root.setLevel(level)
            route = Route(
                gateway(source_url, source_options),
                source_dir,
                gateway(target_url, target_options),
                target_dir,
            )
            copy_all(route, files(), jobs, to_parent, to_parent.landed, to_parent.failed)
            to_parent("end")
    finally:
        for opened in gateways.values():
            opened.close()


def _portable(exc: Exception) -> Exception:
    """``exc`` as it can cross to the parent: itself if it pickles, else its words."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # any failure to pickle
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def main() -> None:
    """A worker started as a fresh interpreter: the parent's pid is its argument."""
    _stop_like_ctrl_c()
    stream = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not break a frame
    _serve(int(sys.argv[1]), sys.stdin.buffer, stream)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
