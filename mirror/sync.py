"""One sync run: upstream repodata -> filters -> plan -> transfer -> publish -> state.

Publication order is what makes a kill harmless: packages first (each verified
and atomic), then repodata through the indexer, then deletions, then state.
At every instant each published record points at a present, correct file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from conda_ferry.gateways import Gateway, GatewayError, LockHeld, NotFound, open_gateway
from conda_ferry.index import repodata
from conda_ferry.index.channel import IndexOptions, index_channel
from conda_ferry.index.publish import OutputOptions
from conda_ferry.index.records import EXTENSIONS, BadFilename, check_filename

from . import errors, upstream
from .config import Job
from .filters import Selection, Selector
from .plan import Plan, make_plan
from .progress import Progress
from .state import SubdirState, subdir_lock
from .transfer import transfer

log = logging.getLogger("ferry.sync")


@dataclass
class SubdirReport:
    subdir: str
    status: str = "up to date"
    added: int = 0
    updated: int = 0
    removed: int = 0
    bytes: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    message: str = ""
    plan: dict[str, Any] | None = None


@dataclass
class SyncReport:
    job: str
    source: str
    target: str
    subdirs: list[SubdirReport] = field(default_factory=list)
    dropped_dependencies: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        statuses = {s.status for s in self.subdirs}
        if "locked" in statuses:
            return errors.LOCKED
        if "failed" in statuses:
            return errors.FAILED
        if "partial" in statuses:
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
            "subdirs": [s.__dict__ for s in self.subdirs],
            "totals": {
                k: sum(getattr(s, k) for s in self.subdirs)
                for k in ("added", "updated", "removed", "bytes")
            },
        }


def _records(document: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """All records of a repodata document, every file name checked first."""
    merged: dict[str, dict[str, Any]] = {}
    for section in ("packages", "packages.conda"):
        items = document.get(section) or {}
        if not isinstance(items, dict):
            raise errors.FerryError(f"{where}: '{section}' is not a JSON object")
        for filename, record in items.items():
            try:
                check_filename(filename)
            except BadFilename as exc:
                raise errors.FerryError(
                    f"{where}: refused: {exc} (upstream repodata is hostile or broken; "
                    "nothing was written)"
                ) from None
            if not isinstance(record, dict) or "name" not in record:
                raise errors.FerryError(f"{where}: record for {filename} has no name")
            merged[filename] = record
    return merged


@dataclass
class MirrorView:
    """What a mirror subdir holds now: published records and package files by size."""

    published: dict[str, dict[str, Any]]
    present: dict[str, int]

    @classmethod
    def read(cls, target: Gateway, subdir: str) -> MirrorView:
        try:
            listing = [f for f in target.list(subdir) if not f.is_dir]
        except NotFound:
            listing = []
        published: dict[str, dict[str, Any]] = {}
        try:
            document = repodata.loads(target.read_bytes(f"{subdir}/repodata.json"))
            published = {**document.get("packages", {}), **document.get("packages.conda", {})}
        except (NotFound, ValueError):
            pass
        present = {
            f.name: f.size
            for f in listing
            if f.name.endswith(EXTENSIONS) and not f.name.startswith(".")
        }
        return cls(published, present)


class SyncRun:
    def __init__(
        self, job: Job, progress: Progress, dry_run: bool = False, force: bool = False
    ) -> None:
        self.job, self.progress, self.dry_run, self.force = job, progress, dry_run, force
        self.report = SyncReport(job.path, "", "", dry_run=dry_run)

    def run(self, explain: str | None = None) -> tuple[SyncReport, list[str]]:
        started = time.monotonic()
        job = self.job
        with (
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
            fetched = self._fetch(source, states, explain is not None)
            if fetched is None:
                self.report.subdirs = [SubdirReport(s) for s in job.subdirs]
                log.info("up to date: nothing changed upstream or in %s", job.path)
                self.report.seconds = time.monotonic() - started
                return self.report, []
            records = {
                s: _records(u.document or {}, source.display(f"{s}/{u.variant}"))
                for s, u in fetched.items()
            }
            selection = Selector(job.filters).select(records)
            self.report.dropped_dependencies = selection.dropped_dependencies
            for note in selection.dropped_dependencies:
                log.warning("dependency not mirrored: %s", note)
            if explain is not None:
                return self.report, selection.explain(explain, records)
            for subdir in job.subdirs:
                self.report.subdirs.append(
                    self._subdir(source, target, fetched[subdir], selection, states[subdir])
                )
        self.report.seconds = time.monotonic() - started
        return self.report, []

    def _fetch(
        self, source: Gateway, states: dict[str, SubdirState], force_full: bool
    ) -> dict[str, upstream.Upstream] | None:
        """Upstream documents of every subdir, or None when nothing at all changed."""
        answers: dict[str, upstream.Upstream] = {}
        for subdir, state in states.items():
            current = state.complete and state.fingerprint == self.job.fingerprint(subdir)
            if current and not force_full:
                answers[subdir] = upstream.fetch(
                    source, subdir, state.variant, state.etag, state.last_modified
                )
            else:
                answers[subdir] = upstream.fetch(source, subdir)
        if all(a.document is None for a in answers.values()):
            return None
        for subdir, answer in answers.items():
            if answer.document is None:  # filters span subdirs: every document is needed
                answers[subdir] = upstream.fetch(source, subdir, answer.variant)
        return answers

    def _subdir(
        self,
        source: Gateway,
        target: Gateway,
        answer: upstream.Upstream,
        selection: Selection,
        state: SubdirState,
    ) -> SubdirReport:
        subdir = answer.subdir
        report = SubdirReport(subdir, status="synced")
        try:
            if self.dry_run:
                plan = self._plan(target, subdir, selection, state)[0]
                report.status, report.plan = "planned", plan.as_dict()
                report.added, report.updated = len(plan.add), len(plan.update)
                report.removed, report.bytes = len(plan.remove), plan.add_bytes
                return report
            with subdir_lock(target, subdir):
                state = SubdirState.load(target, subdir)
                self._apply(source, target, answer, selection, state, report)
        except LockHeld as exc:
            report.status, report.message = "locked", str(exc)
            log.error("%s", exc)
        except (GatewayError, errors.FerryError) as exc:
            report.status, report.message = "failed", str(exc)
            log.error("%s: %s", subdir, exc)
        return report

    def _plan(
        self, target: Gateway, subdir: str, selection: Selection, state: SubdirState
    ) -> tuple[Plan, MirrorView]:
        view = MirrorView.read(target, subdir)
        plan = make_plan(
            subdir,
            selection.kept.get(subdir, {}),
            view.published,
            view.present,
            set(state.upstream_files),
            self.job.prune,
        )
        mirrored = set(state.upstream_files) & view.present.keys()
        wanted_names = {r.get("name") for r in plan.desired.values()}
        # Turnover (an old build replaced by a new one) is routine; names vanishing
        # wholesale is what an emptied upstream or a filter mistake looks like.
        vanishing = [
            f for f in plan.remove if (view.published.get(f) or {}).get("name") not in wanted_names
        ]
        if (
            vanishing
            and not self.force
            and len(vanishing) / len(mirrored) > self.job.max_prune_fraction
        ):
            raise errors.FerryError(
                f"{subdir}: the plan drops every build of {len(vanishing)} of the "
                f"{len(mirrored)} mirrored packages, more than max_prune_fraction "
                f"{self.job.max_prune_fraction} (check the filters; --force to do it anyway)"
            )
        return plan, view

    def _apply(
        self,
        source: Gateway,
        target: Gateway,
        answer: upstream.Upstream,
        selection: Selection,
        state: SubdirState,
        report: SubdirReport,
    ) -> None:
        subdir = answer.subdir
        plan, view = self._plan(target, subdir, selection, state)
        published, present = view.published, view.present
        state.upstream_files = sorted(set(state.upstream_files) | set(plan.add))
        state.complete = False
        if plan.add:
            state.save(target)  # names in flight are ours, even if this run dies
        packages, prefix = self._package_source(source, answer)
        try:
            result = transfer(
                packages,
                prefix,
                target,
                subdir,
                {fn: plan.desired[fn] for fn in plan.add},
                self.job.jobs,
                self.progress,
            )
        finally:
            if packages is not source:
                packages.close()
        target.flush()  # every package durable before any repodata names it
        ok = set(result.done)
        pinned: dict[str, dict[str, Any]] = dict(plan.retained)
        for filename, record in plan.desired.items():
            if filename in ok or (filename in present and filename not in plan.add):
                pinned[filename] = record
            elif filename in present and filename in published:
                pinned[filename] = published[filename]  # the old file, still correct
        outputs = self.job.outputs
        index_channel(
            target,
            IndexOptions(
                subdirs=[subdir],
                pinned={subdir: pinned},
                ignored={subdir: set(state.upstream_files) - pinned.keys()},
                channeldata=False,
                run_exports=False,
                jobs=self.job.jobs,
                outputs=OutputOptions(
                    zst=outputs.zst, bz2=outputs.bz2, jlap=outputs.jlap, shards=outputs.shards
                ),
            ),
        )
        for filename in plan.remove:
            target.delete(f"{subdir}/{filename}")
        state.upstream_files = sorted(set(state.upstream_files) - set(plan.remove))
        state.etag, state.last_modified = answer.etag, answer.last_modified
        state.variant = answer.variant
        state.fingerprint = self.job.fingerprint(subdir)
        state.complete = not result.failed
        report.added, report.updated, report.removed = len(ok), len(plan.update), len(plan.remove)
        report.bytes, report.failures = result.bytes, result.failed
        report.status = "partial" if result.failed else "synced"
        state.last_run = {
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "added": report.added,
            "updated": report.updated,
            "removed": report.removed,
            "failed": len(result.failed),
        }
        state.save(target)

    def _package_source(self, source: Gateway, answer: upstream.Upstream) -> tuple[Gateway, str]:
        """Where the packages are: beside the repodata, or at ``info.base_url`` (CEP 15)."""
        info = (answer.document or {}).get("info") or {}
        base = info.get("base_url") if isinstance(info, dict) else None
        if not base:
            return source, f"{answer.subdir}/"
        subdir_url = f"{source.url.rstrip('/')}/{answer.subdir}/"
        resolved = urljoin(subdir_url, str(base))
        if not resolved.endswith("/"):
            resolved += "/"
        return open_gateway(resolved, self.job.source_options), ""
