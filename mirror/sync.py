"""One sync run: upstream repodata -> filters -> plan -> transfer -> publish -> state.

Every subdir is locked and planned, then all their files come in one transfer, then
each subdir is published in turn (and its lock let go).

Publication order is what makes a kill harmless: packages first (each verified
and atomic), then repodata through the indexer, then deletions, then state.
At every instant each published record points at a present, correct file.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import msgspec

from conda_ferry.gateways import (
    Copied,
    FileInfo,
    Gateway,
    GatewayError,
    LockHeld,
    NotFound,
    adapter,
    matches,
    open_gateway,
)
from conda_ferry.gateways.httpdate import http_date
from conda_ferry.index.channel import (
    ChannelEntry,
    IndexOptions,
    channeldata_json,
    write_channeldata,
)
from conda_ferry.index.compact import Checker, bulk
from conda_ferry.index.records import BadFilename, check_filename
from conda_ferry.index.repodata import SECTIONS
from conda_ferry.index.subdir import SubdirView

from . import errors, sharded, snapshots, upstream
from .channelpage import remember_channel, write_channel_page
from .commit import (
    ASIDE_AT_MOST,
    Commit,
    Committing,
    choose_records,
    collect_garbage,
    when_asked,
)
from .config import Job
from .copiers import Helpers
from .copying import Route, expected
from .filters import Selection, Selector
from .indexing import ensure_noarch
from .plan import Plan, Record, make_plan
from .progress import Progress
from .state import STATE_DIR, SubdirState, subdir_lock, sweep_temps
from .transfer import transfer, usable_cores
from .units import human_size, utc

log = logging.getLogger("ferry.sync")
# There while the channel's own files (channeldata.json, noarch's placeholder, the
# snapshot after a sync, the front page) may lag the subdirs a run committed (it
# failed or was stopped before them): the next run, upstream unchanged, must not say
# "up to date" and leave them so.
OWED = f"{STATE_DIR}/channeldata.owed"
REPLACED = (
    "upstream now serves other bytes under this file name; the mirrored file and its "
    "record are kept (allow_replace: true in the job takes the new one)"
)


class Status(str, enum.Enum):
    """How one subdir's run ended; the value is what reports and ``--json`` say."""

    UP_TO_DATE = "up to date"
    PLANNED = "planned"
    SYNCED = "synced"
    PARTIAL = "partial"
    FAILED = "failed"
    LOCKED = "locked"

    def __str__(self) -> str:
        return self.value

    @property
    def needs_attention(self) -> bool:
        return self in (Status.PARTIAL, Status.FAILED, Status.LOCKED)


class SubdirReport(msgspec.Struct):
    subdir: str
    status: Status = Status.UP_TO_DATE
    added: int = 0
    updated: int = 0
    removed: int = 0
    bytes: int = 0
    failures: dict[str, str] = {}
    files: dict[str, list[str]] = {}  # added/updated/removed names
    published: int | None = None  # records repodata.json lists after the run
    upstream_modified: float | None = None  # upstream's Last-Modified, as a timestamp
    message: str = ""
    plan: dict[str, Any] | None = None
    repodata: dict[str, Any] | None = None  # which upstream file was read, and its bytes
    entries: list[ChannelEntry] = []  # channeldata input

    def as_dict(self) -> dict[str, Any]:
        fields = msgspec.structs.asdict(self)
        del fields["entries"]
        return {**fields, "status": self.status.value}


class SyncReport(msgspec.Struct):
    job: str
    source: str
    target: str
    subdirs: list[SubdirReport] = []
    dropped_dependencies: list[str] = []
    unmatched_includes: list[str] = []
    locked_problems: list[str] = []  # locked, not to be had
    seconds: float = 0.0
    dry_run: bool = False
    snapshots: list[str] = []  # what the job's snapshots: did

    @property
    def exit_code(self) -> int:
        statuses = {s.status for s in self.subdirs}
        if Status.LOCKED in statuses:
            return errors.LOCKED
        if Status.FAILED in statuses:
            return errors.FAILED
        if Status.PARTIAL in statuses or self.locked_problems:
            return errors.PARTIAL
        return errors.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "source": self.source,
            "target": self.target,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
            "dropped_dependencies": self.dropped_dependencies,
            "unmatched_includes": self.unmatched_includes,
            "locked_problems": self.locked_problems,
            "snapshots": self.snapshots,
            "subdirs": [s.as_dict() for s in self.subdirs],
            "totals": {
                k: sum(getattr(s, k) for s in self.subdirs)
                for k in ("added", "updated", "removed", "bytes")
            },
        }


def _records(document: dict[str, Any], where: str) -> tuple[dict[str, Record], dict[str, str]]:
    """The records of a repodata document fit to mirror, and the refused ones with why.

    A record of the wrong shape, without a digest or under an unsafe file name is
    left out (and named in the summary): one bad record must not stop the rest.
    """
    merged: dict[str, Record] = {}
    refused: dict[str, str] = {}
    checked = Checker()
    for section in SECTIONS:
        items = document.get(section) or {}
        if not isinstance(items, dict):
            raise errors.FerryError(f"{where}: '{section}' is not a JSON object")
        for filename, record in items.items():
            try:
                check_filename(filename)
            except BadFilename as exc:
                refused[str(filename)[:200]] = str(exc)
                continue
            fit, problem = checked(record)
            if fit is not None:
                merged[filename] = fit
            else:
                refused[filename] = f"upstream record refused: {problem}"
    return merged, refused  # each is named in the run's summary


class Journal:
    """The state's record of files verified as they landed, saved at most every few
    seconds (after a flush: the journal never vouches for bytes not yet durable)."""

    def __init__(self, target: Gateway, state: SubdirState, interval: float = 2.0) -> None:
        self._target, self._state, self._interval = target, state, interval
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def landed(self, filename: str, copied: Copied) -> None:
        with self._lock:
            self._state.verified[filename] = copied.sha256
            if time.monotonic() - self._last >= self._interval:
                self._save()

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        self._target.flush()
        self._state.save(self._target)
        self._last = time.monotonic()


class _Staged(msgspec.Struct):
    """A subdir between its plan and its commit: locked, its files on their way."""

    answer: upstream.Upstream
    report: SubdirReport
    state: SubdirState
    view: SubdirView
    plan: Plan
    fetch: list[str]  # files to copy
    need: int  # their bytes
    adopted: set[str]
    managed: set[str]
    damaged: set[str]
    package_url: str | None  # where the packages are, when not beside the repodata
    journal: Journal
    lock: contextlib.ExitStack[bool | None] = msgspec.field(default_factory=contextlib.ExitStack)
    done: dict[str, FileInfo] = {}  # copied: file name -> as written
    failed: dict[str, str] = {}
    bytes: int = 0
    ahead: _Ahead | None = None  # its commit, made while its files transferred

    @property
    def subdir(self) -> str:
        return self.answer.subdir


class _Ahead(NamedTuple):
    """A subdir's commit made as if every file of its transfer landed (unstarted),
    the view it was made of, and the workers it was split for."""

    committing: Committing
    view: SubdirView
    spare: int


class SyncRun:
    def __init__(
        self,
        job: Job,
        progress: Progress,
        dry_run: bool = False,
        force: bool = False,
        verify: bool = False,
    ) -> None:
        self.job, self.progress, self.dry_run, self.force = job, progress, dry_run, force
        self.verify = verify
        self.started = time.time()
        self.report = SyncReport(job.path, "", "", dry_run=dry_run)
        self.broken: dict[str, str] = {}  # subdir -> why upstream's repodata is unusable
        self.refused: dict[str, dict[str, str]] = {}  # subdir -> records left out, why
        self.filters = job.filters.for_channel(job.source)  # other channels' locks aside
        self.explaining = False
        self.helpers: Helpers | None = None  # worker processes, during a run
        # channeldata.json as made ahead, and of which subdirs' entries (see _describe)
        self.described: tuple[list[list[ChannelEntry]], bytes] | None = None

    def _name_option(self, exc: GatewayError) -> None:
        """Make a hint name the job key the user wrote, not a command-line flag."""
        if exc.option:
            side = "target" if exc.url.startswith(self.report.target or "\0") else "source"
            exc.option_as = f"{side}_options.{exc.option}"

    def run(self, explain: str | None = None) -> tuple[SyncReport, list[str]]:
        self.explaining = explain is not None
        try:
            return self._run(explain)
        except GatewayError as exc:
            self._name_option(exc)
            raise

    def _run(self, explain: str | None) -> tuple[SyncReport, list[str]]:
        started = time.monotonic()
        job = self.job
        for url in (job.source, job.target):  # imported once, before the workers fork
            adapter(url)
        with (
            self._helpers() as self.helpers,
            open_gateway(job.source, job.source_options) as source,
            open_gateway(job.target, job.target_options) as target,
        ):
            self.report.source, self.report.target = source.display(), target.display()
            if not target.writable:
                raise errors.FerryError(
                    f"{target.display()}: the target must be writable "
                    "(a local path, s3://, sftp:// or ftp://)",
                    errors.USAGE,
                )
            states = {s: SubdirState.load(target, s) for s in job.subdirs}
            self._refuse_held(target, states)
            cache = None if self.dry_run else target
            # a run that stopped after its commits owes the channel's own files: this
            # one compares in full, so that it commits and writes them
            owed = target.exists(OWED)
            fetched = self._fetch(source, states, explain is not None or self.verify or owed, cache)
            if fetched is None:
                self.report.subdirs = [  # up to date
                    SubdirReport(s, upstream_modified=http_date(states[s].last_modified))
                    for s in job.subdirs
                ]
                log.info("up to date: nothing changed upstream or in %s", job.path)
                if not self.dry_run:
                    self._quiet_night(target, states, job.outputs.html)
                self.report.seconds = time.monotonic() - started
                return self.report, []
            records: dict[str, dict[str, Record]] = {}
            refused = self.refused
            with bulk():
                for s, answer in fetched.items():
                    try:
                        records[s], refused[s] = _records(
                            answer.document or {}, source.display(f"{s}/{answer.variant}")
                        )
                    except errors.FerryError as exc:
                        self.broken[s] = str(exc)
                selection = Selector(self.filters).select(records)
            self.report.dropped_dependencies = selection.dropped_dependencies
            self.report.unmatched_includes = selection.unmatched
            self.report.locked_problems = selection.locked_problems
            if selection.unmatched and job.strict and explain is None:
                raise errors.FerryError(
                    f"{job.path}: filters.include: {', '.join(selection.unmatched)} "
                    f"match no upstream record of {', '.join(job.subdirs)} (strict: true; "
                    "check the spelling and the subdirs)",
                    errors.USAGE,
                )
            if explain is not None:
                lines = selection.explain(explain, records)
                if not lines:
                    raise errors.FerryError(
                        f"{source.display()}: no upstream record of {', '.join(job.subdirs)} "
                        f"is named '{explain}' (check the spelling; names are lower case)"
                    )
                return self.report, lines
            descriptions = None
            if not self.dry_run:
                ahead = upstream.ReadAhead(  # while the packages transfer
                    functools.partial(open_gateway, job.source, job.source_options),
                    ["channeldata.json"]
                    + [f"{s}/run_exports.json" for s in fetched if s not in self.broken],
                )
                descriptions = upstream.Descriptions(source, ahead)
                # what killed runs left half-written of the two files written here
                sweep_temps(target, STATE_DIR, (".channel.json.", ".channeldata.owed."))
                remember_channel(target, source.display(), job.public_url)
                if not owed:
                    target.write_bytes(OWED, b"")  # cleared once they are out
            self._subdirs(source, target, fetched, selection, states, descriptions)
            if self.helpers is not None:
                self.helpers.finish()  # they end beside the channel's own files
            for report in self.report.subdirs:
                if refused.get(report.subdir):
                    report.failures.update(refused[report.subdir])
                    if report.status in (Status.SYNCED, Status.UP_TO_DATE):
                        report.status = Status.PARTIAL
            if descriptions is not None:
                whole = not any(
                    s.status in (Status.FAILED, Status.LOCKED) for s in self.report.subdirs
                )
                if whole:
                    lists = [report.entries for report in self.report.subdirs]
                    made = self.described
                    if made is not None and list(map(id, made[0])) != list(map(id, lists)):
                        made = None  # not made of what was published
                    sweep_temps(target, "", ".channeldata.json.")
                    write_channeldata(
                        target,
                        list(job.subdirs),
                        [entry for entries in lists for entry in entries],
                        made[1] if made else None,
                    )
                if "noarch" not in job.subdirs:  # a job's own is published by its commit
                    ensure_noarch(target, job.outputs)
                if job.snapshot_keep and self.report.exit_code == errors.OK:
                    self.report.snapshots = snapshots.after_sync(
                        target, list(job.subdirs), job.snapshot_keep, job.grace
                    )
                    for line in self.report.snapshots:
                        log.info("%s", line)
                write_channel_page(target, job.outputs.html)
                if whole:
                    target.delete(OWED)  # the channel's own files are all out
        self.report.seconds = time.monotonic() - started
        return self.report, []

    def _helpers(self) -> Helpers:
        """Worker processes for the transfers: as many as ``processes`` says, for
        every transfer; else one per core, for transfers worth it."""
        if self.dry_run:
            return Helpers(0)
        count = self.job.processes or usable_cores()
        return Helpers(min(count, self.job.jobs), always=self.job.processes is not None)

    def _refuse_held(self, target: Gateway, states: dict[str, SubdirState]) -> None:
        for subdir, state in sorted(states.items()):
            if state.hold:
                raise errors.FerryError(
                    f"{target.display(subdir)}: held at snapshot {state.hold.get('snapshot')} "
                    f"since {state.hold.get('since')} by 'ferry snapshot restore --hold' "
                    f"(nothing synced; 'ferry snapshot release {target.display()} --subdir "
                    f"{subdir}' lets sync move it forward)"
                )

    def _fetch(
        self,
        source: Gateway,
        states: dict[str, SubdirState],
        force_full: bool,
        cache: Gateway | None,
    ) -> dict[str, upstream.Upstream] | None:
        """Upstream documents of every subdir, or None when nothing at all changed.

        A job selecting by name reads sharded repodata where upstream serves it
        (``cache``: the target, which keeps the shards it fetched)."""
        answers: dict[str, upstream.Upstream] = {}
        indexes: dict[str, sharded.ShardIndex | None] = {}
        # --explain NAME reads every record: NAME may lie outside the closure
        by_name = self.filters.by_name and not self.explaining
        for subdir, state in states.items():
            current = state.complete and state.fingerprint == self.job.fingerprint(subdir)
            current = current and not force_full
            try:
                # an upstream known to serve no shards is not asked again each night
                if by_name and not (current and state.variant in upstream.VARIANTS):
                    remembered = current and state.variant == sharded.INDEX
                    validators = (state.etag, state.last_modified) if remembered else (None, None)
                    try:
                        indexes[subdir] = sharded.fetch_index(source, subdir, *validators)
                        continue
                    except NotFound:
                        pass  # no shard index: the whole repodata
                if current and state.variant in upstream.VARIANTS:
                    answers[subdir] = upstream.fetch(
                        source, subdir, state.variant, state.etag, state.last_modified
                    )
                else:
                    answers[subdir] = upstream.fetch(source, subdir)
            except errors.FerryError as exc:  # this subdir's document; the others go on
                self.broken[subdir] = str(exc)
        unchanged = all(a.document is None for a in answers.values())
        if not self.broken and unchanged and all(i is None for i in indexes.values()):
            return None
        for subdir, answer in answers.items():
            if answer.document is None:  # filters span subdirs: every document is needed
                answers[subdir] = upstream.fetch(source, subdir, answer.variant)
        if indexes:
            answers.update(self._sharded(source, indexes, answers, cache))
        return answers

    def _sharded(
        self,
        source: Gateway,
        indexes: dict[str, sharded.ShardIndex | None],
        answers: dict[str, upstream.Upstream],
        cache: Gateway | None,
    ) -> dict[str, upstream.Upstream]:
        """The sharded subdirs' documents: the records the selection can reach."""
        job = self.job
        try:
            read = {s: i or sharded.read_index(source, s) for s, i in indexes.items()}
            with contextlib.ExitStack() as stack:
                readers = {
                    s: sharded.ShardReader(
                        source, cache, index, job.source_options, job.allow_hosts, stack
                    )
                    for s, index in read.items()
                }
                whole = {s: a.document or {} for s, a in answers.items()}
                found = sharded.closure(readers, whole, self.filters, job.jobs)
        except errors.FerryError as exc:
            self.broken.update(dict.fromkeys(indexes, str(exc)))
            return {}
        if cache is not None:
            sharded.prune_cache(cache, found.used)
        for subdir, count in found.shards.items():
            log.info(
                "%s: %d of %d shards (%s)",
                source.display(f"{subdir}/{sharded.INDEX}"),
                count,
                len(read[subdir].shards),
                human_size(found.bytes[subdir]),
            )
        return {
            s: upstream.Upstream(
                s, found.documents[s], i.etag, i.last_modified, sharded.INDEX, found.bytes[s]
            )
            for s, i in read.items()
        }

    def _subdirs(
        self,
        source: Gateway,
        target: Gateway,
        fetched: dict[str, upstream.Upstream],
        selection: Selection,
        states: dict[str, SubdirState],
        descriptions: upstream.Descriptions | None,
    ) -> None:
        """Each subdir locked and planned, then all their files in one transfer, then
        each committed in turn, its lock let go as soon as it is."""
        with contextlib.ExitStack() as held:  # the staged subdirs' locks, should it stop
            staged: list[_Staged] = []
            for subdir in self.job.subdirs:
                if subdir in self.broken:
                    self.report.subdirs.append(self._broken(target, subdir))
                    continue
                report = SubdirReport(subdir, status=Status.SYNCED)
                self.report.subdirs.append(report)
                pending = sum(s.need for s in staged)
                one = self._stage(
                    source, target, fetched[subdir], selection, states[subdir], report, pending
                )
                if one is not None:
                    held.enter_context(one.lock)
                    staged.append(one)
            self._transfer(source, target, staged, descriptions)
            begun: dict[int, Committing] = {}

            def begin(i: int) -> None:
                """Subdir ``i``'s commit started, if it is to be committed."""
                one = staged[i]
                if i in begun or one.report.status is not Status.SYNCED:
                    return
                assert descriptions is not None  # a dry run stages nothing

                def start() -> None:
                    begun[i] = self._begin(target, one, descriptions)

                self._guarded(target, [one], start)

            for i, one in enumerate(staged):
                try:
                    with one.lock:
                        begin(i)
                        if i in begun and one.report.status is Status.SYNCED:
                            committing = begun.pop(i)
                            # the next subdir's commit starts while this one waits for
                            # its parts, its own parts queued behind them; while the
                            # last one waits, the channel's channeldata.json is made
                            meanwhile = (
                                functools.partial(begin, i + 1)
                                if i + 1 < len(staged)
                                else functools.partial(
                                    self._describe, one.report, committing.entries
                                )
                            )
                            commit = functools.partial(self._commit, one, committing, meanwhile)
                            self._guarded(target, [one], commit)
                finally:
                    if i == 0:  # the others' files journaled for a run that stops before
                        # their commits: after the first commit (or its stop), whose flush
                        # makes them durable with its shards and pages started first (a
                        # flush ahead of it held those up); one killed outright re-reads them
                        for other in staged[1:]:
                            self._guarded(target, [other], other.journal.save)

    def _describe(self, last: SubdirReport, entries: list[ChannelEntry]) -> None:
        """channeldata.json made from every subdir's entries as they are once ``last``
        (whose are ``entries``) is published: written after the commits (if every
        subdir's are those), made while the last one waits for its parts, when the
        workers, not this process, are busy."""
        lists = [entries if report is last else report.entries for report in self.report.subdirs]
        flat = [entry for subdir in lists for entry in subdir]
        self.described = (lists, channeldata_json(list(self.job.subdirs), flat))

    def _broken(self, target: Gateway, subdir: str) -> SubdirReport:
        """A subdir whose upstream document is unusable: failed, and so noted."""
        with contextlib.suppress(LockHeld), subdir_lock(target, subdir):
            self._failed(target, SubdirState.load(target, subdir), self.broken[subdir])
        return SubdirReport(subdir, Status.FAILED, message=self.broken[subdir])

    def _stage(
        self,
        source: Gateway,
        target: Gateway,
        answer: upstream.Upstream,
        selection: Selection,
        state: SubdirState,
        report: SubdirReport,
        pending: int,
    ) -> _Staged | None:
        """The subdir locked and planned, ready for its files (``pending``: bytes the
        subdirs staged before it will add); None where nothing more is to be done (a
        dry run, whose plan is reported, or a failure, reported)."""
        subdir = answer.subdir
        report.repodata = {"via": answer.variant, "bytes": answer.bytes_read}
        with contextlib.ExitStack() as lock:
            try:
                if self.dry_run:
                    plan = self._plan(SubdirView.read(target, subdir), selection, state)
                    report.status, report.plan = Status.PLANNED, plan.as_dict()
                    report.added, report.updated = len(plan.add), len(plan.update)
                    report.removed, report.bytes = len(plan.remove), plan.add_bytes
                    return None
                lock.enter_context(subdir_lock(target, subdir))
                state = SubdirState.load(target, subdir)
                try:
                    staged = self._prepare(
                        source, target, answer, selection, state, report, pending
                    )
                except (GatewayError, errors.FerryError) as exc:
                    self._failed(target, state, str(exc))
                    raise
            except (GatewayError, errors.FerryError) as exc:
                self._fails(report, exc)
                return None
            staged.lock = lock.pop_all()  # held until the subdir is committed
            return staged

    def _fails(self, report: SubdirReport, exc: GatewayError | errors.FerryError) -> None:
        """What a subdir's report (and so the run's exit code) says of its failure."""
        if isinstance(exc, LockHeld):
            report.status = Status.LOCKED
        else:
            if isinstance(exc, GatewayError):
                self._name_option(exc)
            report.status = Status.FAILED
        report.message = str(exc)

    def _failed(self, target: Gateway, state: SubdirState, message: str) -> None:
        """Keep a failed run in the state, for `ferry status` and the channel page,
        and the subdir incomplete: a commit that failed after taking upstream's
        validators must not leave the next run a 304 and nothing to publish."""
        state.complete = False
        state.last_run = {
            "started": utc(self.started),
            "finished": utc(time.time()),
            "result": Status.FAILED.value,
            "message": message,
        }
        with contextlib.suppress(GatewayError):
            target.flush()  # the files it lists as verified durable before it does
            state.save(target)

    def _plan(self, view: SubdirView, selection: Selection, state: SubdirState) -> Plan:
        subdir = view.subdir
        plan = make_plan(
            subdir,
            selection.kept.get(subdir, {}),
            view.published,
            view.present,
            set(state.upstream_files),
            self.job.prune,
            self.job.allow_replace,
            state.verified,
        )
        mirrored = set(state.upstream_files) & view.present.keys()
        wanted_names = {r.get("name") for r in plan.desired.values()}
        # Turnover (an old build replaced by a new one) is routine; names vanishing
        # wholesale is what an emptied upstream or a filter mistake looks like.
        vanishing = [  # published now: a file in its grace period has gone already
            f
            for f in plan.remove
            if f in view.published and view.published[f].get("name") not in wanted_names
        ]
        if (
            vanishing
            and not self.force
            and len(vanishing) / len(mirrored) > self.job.max_prune_fraction
        ):
            raise errors.FerryError(
                f"{subdir}: the plan drops every build of {len(vanishing)} of the "
                f"{len(mirrored)} mirrored packages, more than max_prune_fraction "
                f"{self.job.max_prune_fraction} (an upstream emptied or a filter's mistake: "
                "check both; --force to do it anyway)"
            )
        return plan

    def _prepare(
        self,
        source: Gateway,
        target: Gateway,
        answer: upstream.Upstream,
        selection: Selection,
        state: SubdirState,
        report: SubdirReport,
        pending: int,
    ) -> _Staged:
        subdir = answer.subdir
        view = SubdirView.read(target, subdir)
        damaged = self._damaged(target, view, state) if self.verify else set()
        plan = self._plan(view, selection, state)
        package_url = self._package_url(answer)
        fetch = list(plan.add)
        adopted = set(plan.adopt)
        for filename in plan.check:  # a killed run's file, not in its journal: re-read
            if matches(target, f"{subdir}/{filename}", expected(plan.desired[filename])):
                adopted.add(filename)
            else:
                fetch.append(filename)
        need = sum(int(plan.desired[f]["size"]) for f in fetch)
        self._check_space(target, subdir, pending + need)
        managed = set(state.upstream_files) | set(fetch) | adopted
        state.upstream_files, state.complete = sorted(managed), False
        if fetch:
            state.save(target)  # names in flight are ours, even if this run dies
        withdraw = set(plan.replaced) & set(fetch)
        if withdraw:  # no record may name a file while its bytes change
            keep = {f: r for f, r in view.published.items() if f in view.present}
            for filename in withdraw:
                keep.pop(filename, None)
            Committing(target, view, Commit(keep, managed), state, self._index_options()).finish()
            view = SubdirView.read(target, subdir)
        return _Staged(
            answer,
            report,
            state,
            view,
            plan,
            fetch,
            need,
            adopted,
            managed,
            damaged,
            package_url,
            Journal(target, state),
        )

    def _index_options(self) -> IndexOptions:
        job = self.job
        return IndexOptions(
            channeldata=False, jobs=job.jobs, outputs=job.outputs, reread=self.verify
        )

    def _transfer(
        self,
        source: Gateway,
        target: Gateway,
        staged: list[_Staged],
        descriptions: upstream.Descriptions | None = None,
    ) -> None:
        """The staged subdirs' files: one transfer for all those beside their repodata
        (the workers go on from one subdir's files to the next instead of waiting for
        the last of each, and a few large files are shared out evenly: a cold sync of
        9 + 3 packages of 20 MB took 0.85 s instead of 0.94), one for each subdir whose
        packages are elsewhere (``info.base_url``)."""
        together = [s for s in staged if s.fetch and s.package_url is None]
        if together:
            route = Route(source, "", target, "")
            ahead = self._ahead(target, together, descriptions)
            copy = functools.partial(self._copy, route, together, ahead)
            self._guarded(target, together, copy)
        for one in staged:
            if one.fetch and one.package_url is not None:
                elsewhere = functools.partial(self._copy_elsewhere, one.package_url, target, one)
                self._guarded(target, [one], elsewhere)

    def _copy_elsewhere(self, package_url: str, target: Gateway, staged: _Staged) -> None:
        with open_gateway(package_url, self.job.source_options) as packages:
            self._copy(Route(packages, "", target, f"{staged.subdir}/"), [staged])

    def _ahead(
        self, target: Gateway, group: list[_Staged], descriptions: upstream.Descriptions | None
    ) -> threading.Thread | None:
        """A thread that makes each subdir's commit while its files transfer in the
        workers, as if every one lands (as on most nights): the workers then go from
        their last file straight to its parts of names, where they idled while this
        process made the commit (about 20 ms of a cold sync of 2,000 packages, one
        core idle). :meth:`_begin` takes it only where every file did land. Made on
        a local target only, the one whose parts the workers write."""
        helpers = self.helpers
        if descriptions is None or helpers is None or target.scheme != "file":
            return None
        spare = helpers.alive()  # spare once the transfer ends

        def make() -> None:
            for one in group:
                if len(one.plan.desired) + len(one.plan.retained) > ASIDE_AT_MOST:
                    continue  # its parts are written here, not in the workers
                view = msgspec.structs.replace(one.view, packages=dict(one.view.packages))
                for filename in one.fetch:
                    size = int(one.plan.desired[filename]["size"])
                    view.landed(FileInfo(f"{one.subdir}/{filename}", size, 0.0, "", False))
                try:
                    committing = self._made(
                        target, one, descriptions, view, one.fetch, spare, start=False
                    )
                except Exception:  # made again, and so told, once the files are in
                    log.debug("%s: commit not made ahead", one.subdir, exc_info=True)
                    continue
                one.ahead = _Ahead(committing, view, spare)

        return threading.Thread(target=make, name="ferry-commit-ahead", daemon=True)

    def _copy(
        self, route: Route, group: list[_Staged], ahead: threading.Thread | None = None
    ) -> None:
        """``group``'s files through ``route``; each is named by its path on the target
        below the route's ``target_dir`` (``linux-64/x.conda``, or ``x.conda``);
        ``ahead`` started once the workers have their first files."""
        subdirs = {one.subdir: one for one in group}

        def owner(name: str) -> tuple[_Staged, str]:
            subdir, _, filename = f"{route.target_dir}{name}".partition("/")
            return subdirs[subdir], filename  # neither part has a "/"

        lock = threading.Lock()  # files land from a pool's threads

        def landed(name: str, copied: Copied) -> None:
            one, filename = owner(name)
            with lock:
                one.bytes += copied.size
            one.journal.landed(filename, copied)  # journaled the moment it is true

        below = len(route.target_dir)
        stopped = False
        try:
            result = transfer(
                route,
                {
                    f"{one.subdir}/{f}"[below:]: one.plan.desired[f]
                    for one in group
                    for f in one.fetch
                },
                ", ".join(subdirs),
                self.job.jobs,
                self.progress,
                landed,
                self.helpers,
                None if ahead is None else ahead.start,
            )
        except BaseException as exc:
            for one in group:
                one.journal.save()  # interrupted: what landed is kept for the next run
            stopped = not isinstance(exc, Exception)  # Ctrl-C, SIGTERM
            raise
        finally:
            # a stop does not wait for the commit made ahead (it may be waiting for
            # upstream's channeldata.json); the thread, a daemon, ends with the process
            if ahead is not None and ahead.ident is not None and not stopped:
                ahead.join()
        for name, info in result.done.items():
            one, filename = owner(name)
            one.done[filename] = info
        for name, why in result.failed.items():
            one, filename = owner(name)
            one.failed[filename] = why

    def _guarded(self, target: Gateway, group: list[_Staged], step: Callable[[], None]) -> None:
        """One step of staged subdirs; its failure fails them, and only them."""
        try:
            step()
        except (GatewayError, errors.FerryError) as exc:
            for one in group:
                self._failed(target, one.state, str(exc))
                self._fails(one.report, exc)

    def _begin(
        self, target: Gateway, staged: _Staged, descriptions: upstream.Descriptions
    ) -> Committing:
        """The subdir's commit started: its records chosen and indexed, its parts of
        names in the workers (its state changes when it is published); the one made
        ahead where every file landed, as it was made to expect."""
        ahead, staged.ahead = staged.ahead, None
        spare = self.helpers.spare() if self.helpers else 1
        as_made = ahead is not None and ahead.spare == spare and not staged.failed
        if ahead is not None and as_made and staged.done.keys() == set(staged.fetch):
            for info in staged.done.values():
                ahead.view.landed(info)  # as written, over the sizes it was made with
            staged.view = ahead.view
            ahead.committing.start()
            return ahead.committing
        del ahead  # its memory is not held while the commit is made again
        # finished: the commit flushes and saves the state (a run killed before it
        # re-reads the files of its last seconds, not in the journal, next time)
        for info in staged.done.values():
            staged.view.landed(info)
        return self._made(target, staged, descriptions, staged.view, staged.done, spare)

    def _made(
        self,
        target: Gateway,
        staged: _Staged,
        descriptions: upstream.Descriptions,
        view: SubdirView,
        landed: Collection[str],
        spare: int,
        start: bool = True,
    ) -> Committing:
        """The subdir's commit with ``landed`` of its files in ``view``, its parts of
        names split for ``spare`` workers and ``start``-ed."""
        plan = staged.plan
        unchanged = plan.desired.keys() - set(staged.fetch)
        known = choose_records(
            {**plan.desired, **plan.retained},
            unchanged | set(landed) | plan.retained.keys(),
            view.published,
            view.present,
        )
        extras = descriptions.extras(staged.subdir, known)
        return Committing(
            target,
            view,
            Commit(known, staged.managed, plan.remove, extras, self.job.grace),
            staged.state,
            self._index_options(),
            self.helpers.aside if self.helpers else when_asked,
            spare,
            start,
        )

    def _commit(
        self,
        staged: _Staged,
        committing: Committing,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        state, report, plan, fetch = staged.state, staged.report, staged.plan, staged.fetch
        subdir, answer, adopted = staged.subdir, staged.answer, staged.adopted
        state.etag, state.last_modified = answer.etag, answer.last_modified
        report.published = len(committing.commit.known)
        report.upstream_modified = http_date(answer.last_modified)
        state.variant = answer.variant
        state.fingerprint = self.job.fingerprint(subdir)
        kept = {f: REPLACED for f in plan.replaced if f not in fetch}
        # a refused record or a kept file is looked at again on the next run, not
        # hidden behind a 304
        state.complete = not staged.failed and not self.refused.get(subdir) and not kept
        report.added, report.updated, report.removed = (
            len(staged.done) + len(adopted),
            len(plan.update),
            len(plan.remove),
        )
        report.bytes, report.failures = staged.bytes, {**staged.failed, **kept}
        report.files = {
            "added": sorted(staged.done.keys() | adopted - staged.damaged),
            "updated": plan.update,
            "removed": plan.remove,
            "repaired": sorted(staged.damaged & staged.done.keys()),
        }
        report.status = Status.PARTIAL if report.failures else Status.SYNCED
        state.last_run = {
            "started": utc(self.started),
            "finished": utc(time.time()),
            "result": report.status.value,
            "added": report.added,
            "updated": report.updated,
            "removed": report.removed,
            "failed": len(report.failures),
        }
        _, report.entries = committing.finish(meanwhile)

    @staticmethod
    def _quiet_night(target: Gateway, states: dict[str, SubdirState], html: bool) -> None:
        """Upstream unchanged: note that the mirror was found current (monitoring
        asks "did the sync run?", not "did upstream change?"), delete files whose
        grace has passed even though nothing else changed, and redraw the front page
        if a killed run left it behind (unchanged, it is not written)."""
        now = time.time()
        for subdir, state in states.items():
            try:
                with subdir_lock(target, subdir):
                    if any(when <= now for when in state.due.values()):
                        collect_garbage(target, subdir, everything=False)
                    state = SubdirState.load(target, subdir)
                    state.checked = utc(now)
                    state.save(target)
            except LockHeld:
                continue  # another writer has it: its run is the news
        write_channel_page(target, html)

    @staticmethod
    def _check_space(target: Gateway, subdir: str, need: int) -> None:
        """Refuse to start what cannot finish: a full disk mid-transfer helps nobody."""
        free = target.free_space(subdir)
        margin = max(64 << 20, need // 20)
        if need and free is not None and need + margin > free:
            raise errors.FerryError(
                f"{target.display(subdir)}: {human_size(need)} to add but {human_size(free)} "
                f"free (and {human_size(margin)} kept spare): free space or narrow the "
                "filters; nothing was written"
            )

    def _damaged(self, target: Gateway, view: SubdirView, state: SubdirState) -> set[str]:
        """Mirrored packages whose file is missing or no longer matches its record.

        They are taken out of the view: the plan fetches them again, and a record whose
        file is not repaired is withdrawn, never published over a corrupt file."""
        managed = set(state.upstream_files)
        mirrored = {f: r for f, r in view.published.items() if f in managed}

        def intact(filename: str) -> bool:
            return filename in view.packages and matches(
                target, f"{view.subdir}/{filename}", expected(mirrored[filename])
            )

        with ThreadPoolExecutor(max_workers=max(1, self.job.jobs)) as pool:
            verdicts = dict(zip(mirrored, pool.map(intact, mirrored), strict=True))
        damaged = {f for f, ok in verdicts.items() if not ok}
        for filename in sorted(damaged):
            how = "corrupt" if filename in view.packages else "missing"
            log.warning(
                "%s: %s; fetching it again", target.display(f"{view.subdir}/{filename}"), how
            )
            view.packages.pop(filename, None)
        return damaged

    def _package_url(self, answer: upstream.Upstream) -> str | None:
        """Where the packages are when not beside the repodata: ``info.base_url``
        (CEP 15), checked before anything is written."""
        info = (answer.document or {}).get("info")
        base = info.get("base_url") if isinstance(info, dict) else None
        if not base:
            return None
        job = self.job
        return upstream.package_location(job.source, answer.subdir, base, job.allow_hosts)
