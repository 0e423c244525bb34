"""The ``ferry`` command line: parse, call one function, print.

Exit statuses are in :mod:`errors`; every expected failure is one line on stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from conda_ferry import __version__
from conda_ferry.gateways import (
    CredentialsError,
    GatewayError,
    GatewayOptions,
    LockHeld,
    UsageError,
    copy_url,
    list_url,
    open_gateway,
    redact,
    redact_text,
    split_url,
)
from conda_ferry.index.outputs import OutputOptions

from . import errors
from .units import human_size, plural, utc

if TYPE_CHECKING:
    from .bundle import Manifest
    from .sync import SyncReport

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("ferry")


class FerryGroup(click.Group):
    """Turns every expected failure into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        started, code = time.time(), errors.OK
        try:
            return self._invoke(ctx)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else errors.FAILED
            raise
        except click.exceptions.Exit as exc:
            code = exc.exit_code
            raise
        except click.ClickException as exc:
            code = exc.exit_code
            raise
        except click.exceptions.Abort:
            code = errors.INTERRUPTED
            raise
        finally:
            _write_json(ctx, started, code)
            _write_metrics(ctx, started, code)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
        except SystemExit as exc:
            if not exc.code:
                _output_lost(ctx)
            raise
        except LockHeld as exc:
            _fail(str(exc), errors.LOCKED)
        except (UsageError, CredentialsError) as exc:
            _fail(str(exc), errors.USAGE)
        except GatewayError as exc:
            _fail(str(exc), errors.FAILED)
        except errors.FerryError as exc:
            _fail(str(exc), exc.code)
        except errors.Stopped as exc:
            _fail(str(exc), exc.code)
        except KeyboardInterrupt:
            _fail("interrupted", errors.INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug of ours: still one line, the trace under -v
            log.debug("internal error", exc_info=True)
            _fail(
                f"internal error: {type(exc).__name__}: {exc} "
                "(a bug in ferry; run with -v for the traceback and report it)",
                errors.FAILED,
            )
        _output_lost(ctx)
        return result


def _output_lost(ctx: click.Context) -> None:
    """A run whose own work went well fails still if its output could not be written:
    a cron log on a full disk must not read as a quiet success."""
    lost = ctx.meta.get("ferry.output_lost")
    if lost:
        _fail(f"standard output: cannot write: {lost} (the work itself is done)", errors.FAILED)


def _fail(message: str, code: int) -> None:
    message = redact_text(message)
    click.get_current_context().meta["ferry.error"] = message
    click.echo(f"ferry: error: {message}", err=True)
    sys.exit(code)


def _result(ctx: click.Context) -> dict[str, Any]:
    result = ctx.meta.get("ferry.report")
    return dict(result() if callable(result) else (result or {}))


def _write_out(option: str, path: str, text: str) -> None:
    """A report file written atomically (``-``: stdout); failing to write one is said
    but does not change the run's own outcome."""
    try:
        if path == "-":
            out(text.rstrip("\n"))
            return
        directory, name = split_url(path)
        with open_gateway(directory) as gateway:
            gateway.write_bytes(name, text.encode())
    except (GatewayError, OSError) as exc:
        click.echo(redact_text(f"ferry: error: {option} {path}: cannot write: {exc}"), err=True)


def _write_json(ctx: click.Context, started: float, code: int) -> None:
    """``--json FILE`` on every exit, success or not: monitoring must never go on
    reading the last green report after a run that failed or was stopped."""
    path = ctx.meta.get("ferry.json")
    if not path:
        return
    envelope = {
        "command": ctx.invoked_subcommand,
        "started": utc(started),
        "finished": utc(time.time()),
        "exit_code": code,
        "error": ctx.meta.get("ferry.error"),
        "version": __version__,
        "host": socket.gethostname(),
    }
    text = json.dumps(_redacted({**_result(ctx), **envelope}), indent=2, sort_keys=True)
    _write_out("--json", path, text + "\n")


def _redacted(value: Any) -> Any:
    """``value`` with every URL in its strings redacted: a report quotes what the user
    gave (a job path, a target), which may carry a password."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


def _write_metrics(ctx: click.Context, started: float, code: int) -> None:
    """``sync --metrics FILE``, merged with what the file held (see metrics.py)."""
    path, job = ctx.meta.get("ferry.metrics"), ctx.meta.get("ferry.job")
    if path and job:
        from pathlib import Path

        from . import metrics

        _write_out("--metrics", path, metrics.update(Path(path), job, _result(ctx), code, started))


def _stop_on(signum: int, code: int, what: str) -> None:
    def handler(number: int, frame: object) -> None:
        raise errors.Stopped(code, what)

    signal.signal(signum, handler)


class _Redacting(logging.Formatter):
    """Every line on stderr, tracebacks included, with the URLs in it redacted: a
    library's message may quote a URL ferry never had the chance to clean."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "paramiko", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threading.excepthook = _thread_ended
    warnings.showwarning = _library_warned


def _library_warned(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A library's warning (dateutil's on a date a server made up, a deprecation) is
    one debug line: it is about the library's insides, not the run, and Python's own
    two lines, source quoted, would land in a cron job's mail unredacted."""
    text = " ".join(str(message).split())
    log.debug("%s (%s:%d): %s", category.__name__, os.path.basename(filename), lineno, text)


def _thread_ended(args: threading.ExceptHookArgs) -> None:
    """A library's helper thread that dies (paramiko's prefetcher, when a transfer is
    abandoned and its connection closed) is a debug line, not a traceback on stderr:
    whatever it meant for the run reaches the thread that reads. A thread of ours
    that dies is a bug, reported as Python reports it."""
    frames = traceback.walk_tb(args.exc_traceback)
    if any(f.f_globals.get("__name__", "").startswith("conda_ferry") for f, _ in frames):
        threading.__excepthook__(args)
        return
    name = args.thread.name if args.thread else "?"
    log.debug("thread %s ended: %s: %s", name, args.exc_type.__name__, args.exc_value)


def quiet() -> bool:
    """Whether ``-q`` was given: success output is then silenced, errors are not."""
    return bool(click.get_current_context().find_root().params.get("quiet"))


def out(text: str) -> None:
    """A line on stdout. A reader that went away (``ferry ls | head -1``) must not
    stop the work: the rest of the output goes nowhere, the run goes on."""
    try:
        try:
            click.echo(text)
        except UnicodeEncodeError:  # a file name's bytes that are no text (a strict
            # locale's stdout refuses them): written as those bytes, as ls writes them
            click.echo(_as_bytes(text))
    except OSError as exc:
        _stdout_to_devnull()  # also silences the flush at exit
        ctx = click.get_current_context(silent=True)
        if ctx is not None and not isinstance(exc, BrokenPipeError):  # a full disk
            ctx.meta.setdefault("ferry.output_lost", exc.strerror or str(exc))


def _as_bytes(text: str) -> bytes:
    """``text`` as UTF-8, where bytes the file system gave undecoded are those bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no file name makes: shown as escaped
        return text.encode("utf-8", "backslashreplace")


def _stdout_to_devnull() -> None:
    """The rest of standard output, buffered or to come, goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def say(text: str = "") -> None:
    """A line of a command's result on stdout; nothing under ``-q``."""
    if not quiet():
        out(text)


EXIT_TABLE = "\n".join(f"{code:>5}  {what}" for code, what in errors.EXIT_CODES.items())


@click.group(
    cls=FerryGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=f"\b\nExit status:\n{EXIT_TABLE}",
)
@click.version_option(__version__, prog_name="ferry")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (repeatable).")
@click.option(
    "-q", "--quiet", is_flag=True, help="Print nothing on success; warnings and errors only."
)
def main(verbose: int, quiet: bool) -> None:
    """Mirror conda channels across air gaps and publish custom channels.

    \b
    URLs: a local path or file://, http(s)://host/path (read-only),
    s3://bucket/prefix, ftp(s)://user@host:port/path, sftp://user@host:port/path
    (/~/ for the home directory). See docs/gateways.md for credentials.

    \b
    Every command: -q prints nothing on success; --json FILE writes its result as
    JSON ('-' for standard output); errors are one 'ferry: error:' line on stderr.
    """
    setup_logging(-1 if quiet else verbose)
    _stop_on(signal.SIGTERM, errors.TERMINATED, "stopped by SIGTERM")
    _stop_on(signal.SIGHUP, errors.HANGUP, "stopped by SIGHUP")
    if click.get_current_context().invoked_subcommand != "sync":
        collect_from_here()  # sync does, once it has loaded the modules of its run


def collect_from_here() -> None:
    """The cyclic collector on again, where the console script turned it off for the
    start (:mod:`.command`): what the start made (modules, classes, the job) is
    frozen, never walked by a collection again, in this process or its workers."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _subdir_names(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...] | str | None
) -> Any:
    """``--subdir`` values that can only name a subdir, never a path elsewhere."""
    if not value:
        return value
    from conda_ferry.index.records import is_subdir_name  # rattler comes with it

    for name in (value,) if isinstance(value, str) else value:
        if not is_subdir_name(name):
            raise click.BadParameter(
                f"'{redact_text(name)}' is not a subdir name (e.g. linux-64, noarch)"
            )
    return value


subdirs_option = click.option(
    "--subdir",
    "subdirs",
    multiple=True,
    metavar="SUBDIR",
    callback=_subdir_names,
    help="Only this subdir (repeatable).",
)


def json_option(fn: F) -> F:
    """``--json FILE``, the same on every command; written by :class:`FerryGroup`
    on every exit, from what the command handed to :func:`report_result`."""

    def remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.meta["ferry.json"] = value

    return click.option(
        "--json",
        metavar="FILE",
        expose_value=False,
        callback=remember,
        help="Also write the result as JSON to FILE ('-': standard output), "
        "on every exit, with its time and exit code.",
    )(fn)


# One for every file option: each new click.Path looks its name up in the message
# catalogues, which cost several ms of every start across the commands' options.
_FILE = click.Path(exists=True, dir_okay=False)


class _FiniteFloat(click.FloatRange):
    """A bounded float that is a number: nan passes every comparison with a bound."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def _click_option(spec: dataclasses.Field[Any]) -> click.Option:
    """The command-line form of one declared option field."""
    flag = f"--{spec.name.replace('_', '-')}"
    meta, default = spec.metadata, spec.default
    metavar = meta.get("metavar") or ("FILE" if meta.get("kind") == "file" else "N")
    where = ", ".join(meta.get("protocols") or ())
    help_text = f"{meta['help']} ({where})" if where else meta["help"]
    if isinstance(default, bool):
        if default:
            return click.Option(
                [f"{flag}/--no-{flag[2:]}", spec.name], default=True, help=help_text
            )
        return click.Option([flag, spec.name], is_flag=True, help=help_text)
    if isinstance(default, (int, float)):
        kind = click.IntRange if isinstance(default, int) else _FiniteFloat
        bounds = kind(meta.get("minimum"), meta.get("maximum"))
        return click.Option(
            [flag, spec.name],
            type=bounds,
            default=default,
            show_default=True,
            metavar=metavar,
            help=help_text,
        )
    if meta.get("kind") == "file":
        return click.Option([flag, spec.name], type=_FILE, metavar=metavar, help=help_text)
    return click.Option([flag, spec.name], metavar=metavar, help=help_text)


def declared_options(cls: type, param: str) -> Callable[[F], F]:
    """Every declared field of ``cls`` as an option; the command gets one ``cls``
    instance as ``param``. The job file's keys come from the same fields."""
    names = [spec.name for spec in dataclasses.fields(cls)]
    # made once, shared by every command that takes them: a dozen commands made
    # their own 275 options at every start (5 ms)
    options = [_click_option(spec) for spec in dataclasses.fields(cls)]

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[param] = cls(**{name: kwargs.pop(name) for name in names})
            return fn(*args, **kwargs)

        # as click.option leaves them: in reverse, the command reverses them again
        params = wrapper.__dict__.setdefault("__click_params__", [])
        params.extend(reversed(options))
        return wrapper  # type: ignore[return-value]

    return decorate


gateway_options = declared_options(GatewayOptions, "options")


@main.command("ls")
@click.argument("url")
@click.option("-r", "--recursive", is_flag=True, help="List every file below URL.")
@json_option
@gateway_options
def ls_command(url: str, recursive: bool, options: GatewayOptions) -> None:
    """List a directory with sizes and times: a quick check of credentials and reach."""
    entries = list_url(url, recursive, options)
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.mtime)) if entry.mtime else "-"
        name = f"{entry.path}/" if entry.is_dir else entry.path
        say(f"{human_size(entry.size):>10}  {when:16}  {name}")
    report_result(
        {
            "url": redact(url),
            "entries": [
                {"path": e.path, "size": e.size, "mtime": e.mtime, "dir": e.is_dir} for e in entries
            ],
        },
    )


@main.command("cp")
@click.argument("src")
@click.argument("dst")
@click.option("--sha256", metavar="HEX", help="Refuse the copy unless the bytes have this digest.")
@json_option
@gateway_options
def cp_command(src: str, dst: str, sha256: str | None, options: GatewayOptions) -> None:
    """Copy one file between any two URLs: streamed, verified, atomic.

    DST ending in / is a directory: the file keeps its name.
    """
    started = time.monotonic()
    copied = copy_url(src, dst, sha256, options)
    seconds = time.monotonic() - started
    say(
        f"copied {redact(src)} to {redact(dst)}: {human_size(copied.size)} in "
        f"{seconds:.1f}s, sha256 {copied.sha256}"
    )
    report_result(
        {
            "source": redact(src),
            "target": redact(dst),
            "size": copied.size,
            "sha256": copied.sha256,
            "seconds": round(seconds, 3),
        },
    )


def report_result(report: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
    """What ``--json`` says of this run (a callable: read when the run ends, however
    it ends)."""
    click.get_current_context().meta["ferry.report"] = report


@main.command("index")
@click.argument("channel")
@click.option(
    "--subdir",
    "subdirs",
    multiple=True,
    metavar="SUBDIR",
    callback=_subdir_names,
    help="Index only this subdir (repeatable).",
)
@click.option("--patch-instructions", metavar="FILE", help="A patch_instructions.json to apply.")
@click.option(
    "--patch-package", metavar="FILE", help="A repodata-patches .tar.bz2 package to apply."
)
@declared_options(OutputOptions, "outputs")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Packages read in parallel [default: number of cores].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Where the index cache lives.",
)
@json_option
@gateway_options
def index_command(
    channel: str,
    subdirs: tuple[str, ...],
    patch_instructions: str | None,
    patch_package: str | None,
    outputs: OutputOptions,
    jobs: int | None,
    cache_dir: str | None,
    options: GatewayOptions,
) -> None:
    """Write repodata.json (+ .zst), repodata.jlap and shards for a channel of packages.

    CHANNEL is a directory of subdirs (noarch, linux-64, ...) on any writable URL.
    Only new or changed packages are read; an unchanged channel is left untouched.
    Records of packages mirrored by 'ferry sync' are kept as upstream serves them.
    """
    from pathlib import Path

    from conda_ferry.index.channel import IndexOptions

    from .indexing import load_patches, reindex

    if patch_instructions and patch_package:
        raise click.UsageError("give --patch-instructions or --patch-package, not both")
    patches = load_patches(patch_instructions, patch_package, options)
    with open_gateway(channel, options) as gateway:
        summary = reindex(
            gateway,
            IndexOptions(
                subdirs=list(subdirs) or None,
                outputs=outputs,
                patch_instructions=patches,
                jobs=jobs or os.cpu_count() or 2,
                cache_dir=Path(cache_dir) if cache_dir else None,
            ),
        )
    report = summary.as_dict()
    skipped = report["skipped"]
    say(
        f"indexed {report['url']}: {plural(report['packages'], 'package')} in "
        f"{plural(len(summary.subdirs), 'subdir')} ({report['read']} read, "
        f"{report['cached']} from cache, {len(skipped)} skipped); "
        f"{plural(len(report['written']), 'file')} written in {report['seconds']:.2f}s"
    )
    report_result(report)
    if skipped:  # each was named on stderr as it was skipped
        sys.exit(errors.PARTIAL)


def _print_sync(report: SyncReport) -> None:
    """A line for each subdir where something happened or went wrong; nothing for the
    ones that were up to date. Under -q only the ones that need attention."""
    from .sync import Status

    for sub in report.subdirs:
        if sub.status is Status.UP_TO_DATE or (quiet() and not sub.status.needs_attention):
            continue
        if sub.status is Status.PLANNED:
            line = (
                f"{sub.subdir:14} add {sub.added:6} ({human_size(sub.bytes)})  "
                f"update {sub.updated:6}  remove {sub.removed:6}"
            )
        else:
            line = f"{sub.subdir:14} {sub.status.value:10}"
            if sub.status in (Status.SYNCED, Status.PARTIAL):
                line += (
                    f" added {sub.added}, updated {sub.updated}, removed {sub.removed}, "
                    f"{human_size(sub.bytes)}"
                )
        line += f"  {sub.message}" if sub.message else ""
        if sub.status.needs_attention:  # the one place a failure is said: stderr
            click.echo(line, err=True)
        else:
            out(line)
        for filename, why in sorted(sub.failures.items()):
            click.echo(f"  failed: {sub.subdir}/{filename}: {why}", err=True)


@main.command("sync")
@click.argument("job_file", metavar="JOB.yaml")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option(
    "--explain",
    metavar="NAME",
    help="Say which rule kept or dropped each record of package NAME (writes nothing).",
)
@click.option("--force", is_flag=True, help="Prune even beyond max_prune_fraction.")
@click.option(
    "--verify",
    is_flag=True,
    help="Re-read every mirrored package on the target; fetch the missing and corrupt "
    "ones again, withdraw the records of those that cannot be repaired.",
)
@click.option(
    "--metrics",
    metavar="FILE",
    help="Write the run's outcome for Prometheus (node_exporter's textfile collector), "
    "on every exit; the file is merged, not replaced.",
)
@json_option
@click.pass_context
def sync_command(
    ctx: click.Context,
    job_file: str,
    dry_run: bool,
    explain: str | None,
    force: bool,
    verify: bool,
    metrics: str | None,
) -> None:
    """Mirror the subdirs of an upstream channel as JOB.yaml describes.

    Quiet when nothing changed (one request per subdir, one line on stderr, none on
    stdout), loud when something failed. Exit 3 when named packages failed.
    """
    from .config import load_job
    from .progress import make_progress
    from .sync import Status, SyncRun

    report_result({"job": job_file})
    if metrics:
        ctx.meta["ferry.metrics"] = metrics
        ctx.meta["ferry.job"] = os.path.splitext(os.path.basename(job_file))[0]
    job = load_job(job_file)
    progress = make_progress(quiet())
    run = SyncRun(job, progress, dry_run=dry_run, force=force, verify=verify)
    collect_from_here()
    report_result(run.report.as_dict)  # what was done so far, however the run ends
    try:
        report, explanation = run.run(explain)
    finally:
        progress.close()
    if explain is not None:
        for line in explanation:
            say(line)
        return
    _print_sync(report)
    for note in report.dropped_dependencies:
        click.echo(f"  dependency not mirrored: {note}", err=True)
    for spec in report.unmatched_includes:
        click.echo(f"  include matches no upstream record: '{spec}'", err=True)
    for problem in report.locked_problems:
        click.echo(f"  locked package not mirrored: {problem}", err=True)
    totals = report.as_dict()["totals"]
    if not dry_run and any(s.status is not Status.UP_TO_DATE for s in report.subdirs):
        log.info(
            "done in %.1fs: %d added, %d updated, %d removed, %s",
            report.seconds,
            totals["added"],
            totals["updated"],
            totals["removed"],
            human_size(totals["bytes"]),
        )
    if report.exit_code:
        ctx.exit(report.exit_code)


@main.command("verify")
@click.argument("target")
@subdirs_option
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    metavar="N",
    help="Packages re-read in parallel.",
)
@json_option
@gateway_options
@click.pass_context
def verify_command(
    ctx: click.Context,
    target: str,
    subdirs: tuple[str, ...],
    jobs: int,
    options: GatewayOptions,
) -> None:
    """Re-read every package the repodata lists, and every shard: report missing, extra
    and corrupt files."""
    from .verify import verify_channel

    with open_gateway(target, options) as gateway:
        findings = verify_channel(gateway, list(subdirs) or None, jobs)
    for kind in ("missing", "corrupt", "extra"):
        for item in findings[kind]:
            click.echo(f"{kind}: {item}", err=True)
    for subdir in findings["unindexed"]:
        click.echo(f"no repodata: {subdir}/repodata.json is missing", err=True)
    snaps = len(findings["snapshots"])
    checked_shards = f" and {plural(findings['shards'], 'shard')}" if findings["shards"] else ""
    say(
        f"verified {plural(findings['checked'], 'package')}{checked_shards} in "
        f"{plural(len(findings['subdirs']), 'subdir')}"
        + (f" and {plural(snaps, 'snapshot')}" if snaps else "")
        + f": {len(findings['missing'])} missing, "
        f"{len(findings['corrupt'])} corrupt, {len(findings['extra'])} extra"
    )
    report_result(findings)
    damaged = len(findings["missing"]) + len(findings["corrupt"])
    fixes = []
    if damaged:
        fixes.append(
            f"{plural(damaged, 'file')} missing or corrupt: 'ferry sync JOB --verify' "
            "fetches a mirror's again (a channel of your own: publish them again)"
        )
    if findings["unindexed"]:
        fixes.append(
            f"{plural(len(findings['unindexed']), 'subdir')} without repodata: a mirror's "
            f"next sync publishes it (a channel of your own: 'ferry index {redact(target)}')"
        )
    if findings["extra"]:
        fixes.append(f"{plural(len(findings['extra']), 'file')} no repodata names (listed above)")
    if fixes:
        _fail(f"{redact(target)}: {'; '.join(fixes)}", errors.FAILED)


@main.command("status")
@click.argument("target")
@subdirs_option
@click.option(
    "--max-age",
    metavar="DURATION",
    help="Exit 1 when a subdir's last run is older than this (e.g. 26h, 2d).",
)
@json_option
@gateway_options
@click.pass_context
def status_command(
    ctx: click.Context,
    target: str,
    subdirs: tuple[str, ...],
    max_age: str | None,
    options: GatewayOptions,
) -> None:
    """Each subdir's last run, age, size, files in their grace and lock, from what the
    mirror keeps (no upstream request). Exit 1 when a last run failed or is too old."""
    from .status import channel_status
    from .yamldoc import parse_duration

    limit = parse_duration(max_age) if max_age else None
    if max_age and limit is None:
        raise click.BadParameter(f"{max_age!r} is not a duration (e.g. 26h, 2d)")
    with open_gateway(target, options) as gateway:
        rows = channel_status(gateway, list(subdirs) or None, limit)
    for row in rows:
        last = row["last_run"]
        when = f"{last.get('result', '?')} at {last['finished']}" if last else "never synced"
        say(
            f"{row['subdir']:14} {when}; {plural(row['records'], 'record')}, "
            f"{human_size(row['bytes'])}"
            + (f", {row['pending_deletion']} retiring" if row["pending_deletion"] else "")
            + (f", {plural(len(row['snapshots']), 'snapshot')}" if row["snapshots"] else "")
            + (f"; locked: {row['lock']}" if row["lock"] else "")
            + (f"; held at snapshot {row['hold'].get('snapshot')}" if row["hold"] else "")
        )
        for problem in row["problems"]:
            click.echo(f"{row['subdir']}: {problem}", err=True)
    report_result({"target": redact(target), "subdirs": rows})
    if any(row["problems"] for row in rows):
        ctx.exit(errors.FAILED)


@main.command("gc")
@click.argument("target")
@subdirs_option
@click.option("--now", is_flag=True, help="Delete every retiring file, due or not.")
@json_option
@gateway_options
def gc_command(target: str, subdirs: tuple[str, ...], now: bool, options: GatewayOptions) -> None:
    """Delete the files no published repodata names any more whose grace has passed.

    Pruned packages and stale shards stay for the job's grace (default 7 days) so that
    clients holding yesterday's index still find them; every writer deletes what is
    due, this does it on demand.
    """
    from conda_ferry.index.channel import discover_subdirs

    from .channelpage import refresh_channel_page
    from .commit import collect_garbage
    from .state import subdir_lock

    deleted: list[str] = []
    waiting: list[float] = []  # when each file still in its grace is due
    with open_gateway(target, options) as gateway:
        for subdir in list(subdirs) or discover_subdirs(gateway):
            with subdir_lock(gateway, subdir):
                gone, due = collect_garbage(gateway, subdir, now)
                deleted.extend(gone)
                waiting.extend(due.values())
        refresh_channel_page(gateway)
    for path in deleted:
        say(f"deleted {path}")
    left = ""
    if waiting:
        left = f"; {plural(len(waiting), 'file')} in their grace, the next due {utc(min(waiting))}"
    say(f"deleted {plural(len(deleted), 'file')}{left}")
    report_result({"deleted": deleted})


@main.command("publish")
@click.argument("packages", nargs=-1, required=True)
@click.option(
    "--to", "channel", required=True, metavar="URL", help="The custom channel (any writable URL)."
)
@click.option(
    "--subdir",
    metavar="SUBDIR",
    callback=_subdir_names,
    help="Put the packages here [default: each package's own subdir].",
)
@click.option("--force", is_flag=True, help="Replace a package the channel has with other bytes.")
@json_option
@gateway_options
def publish_command(
    packages: tuple[str, ...],
    channel: str,
    subdir: str | None,
    force: bool,
    options: GatewayOptions,
) -> None:
    """Add local packages to a custom channel and re-index the subdirs they went to."""
    from .publish import publish_packages

    with open_gateway(channel, options) as gateway:
        placed = publish_packages(gateway, list(packages), subdir, options, force)
        where = gateway.display()
    for path in placed:
        say(f"published {path}")
    report_result({"channel": where, "published": placed})


def _volume_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from .yamldoc import parse_size

    size = parse_size(value)
    if size is None or size < 1 << 20:
        raise click.BadParameter(f"{value!r} is not a size of at least 1MiB (e.g. 4GB or 700MiB)")
    return size


def _manifest_summary(manifest: Manifest) -> dict[str, Any]:
    return {
        "id": manifest.id,
        "follows": manifest.follows,
        "full": manifest.full,
        "created": manifest.created,
        "subdirs": manifest.subdirs,
        "files": len(manifest.files),
        "bytes": sum(f.size for f in manifest.files),
    }


@main.command("export")
@click.argument("mirror")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option(
    "--since", metavar="BUNDLE_ID", help="Changes since this export [default: since the last one]."
)
@click.option("--full", is_flag=True, help="Everything, for a first or rebuilding transfer.")
@subdirs_option
@click.option(
    "--volume-size",
    default="4GB",
    show_default=True,
    metavar="SIZE",
    callback=_volume_size,
    help="Largest volume; bigger packages are split in parts.",
)
@click.option(
    "--sign",
    "sign_key",
    type=click.Path(dir_okay=False),
    metavar="KEY",
    help="Sign the manifest with this Ed25519 private key (see 'ferry keygen').",
)
@json_option
@gateway_options
def export_command(
    mirror: str,
    bundle_dir: str,
    since: str | None,
    full: bool,
    subdirs: tuple[str, ...],
    volume_size: int,
    sign_key: str | None,
    options: GatewayOptions,
) -> None:
    """Write the mirror's changes since the last export as a bundle for the air gap."""
    from .bundle import describe, export_bundle

    if since and full:
        raise click.UsageError("give --since or --full, not both")
    with open_gateway(mirror, options) as gateway:
        manifest = export_bundle(
            gateway, bundle_dir, since, full, list(subdirs) or None, volume_size, sign_key
        )
    for line in describe(manifest, bool(sign_key)):
        say(line)
    report_result(_manifest_summary(manifest))


@main.command("import")
@click.argument("bundle_dir")
@click.option(
    "--to", "target", required=True, metavar="URL", help="The inside mirror (any writable URL)."
)
@click.option(
    "--verify-key",
    type=click.Path(dir_okay=False),
    metavar="PUB",
    help="Refuse bundles not signed by this Ed25519 public key.",
)
@click.option(
    "--allow-gap",
    is_flag=True,
    help="Accept a bundle that does not follow the last "
    "one imported (removals and hot-fixes in between are lost).",
)
@click.option(
    "--allow-rollback",
    is_flag=True,
    help="Accept a bundle created before the last one imported (a deliberate rollback).",
)
@json_option
@gateway_options
def import_command(
    bundle_dir: str,
    target: str,
    verify_key: str | None,
    allow_gap: bool,
    allow_rollback: bool,
    options: GatewayOptions,
) -> None:
    """Verify a bundle completely, then apply it: packages, repodata, removals."""
    from .bundle import ImportStatus, import_bundle

    with open_gateway(bundle_dir, options) as bundle, open_gateway(target, options) as gateway:
        result = import_bundle(bundle, gateway, verify_key, allow_gap, allow_rollback)
    if result.status is ImportStatus.ALREADY_APPLIED:
        say(f"bundle {result.id} was applied already; nothing to do")
    else:
        say(
            f"applied bundle {result.id}: {plural(result.packages, 'package')} "
            f"({human_size(result.bytes)}), {result.removed} removed"
            + (f"; snapshots {', '.join(result.snapshots)}" if result.snapshots else "")
        )
    for name, why in sorted(result.refused.items()):
        click.echo(f"  not published: {name}: {why}", err=True)
    report_result({**result.__dict__, "status": result.status.value})
    if result.refused:
        sys.exit(errors.PARTIAL)


@main.command("bundle-info")
@click.argument("bundle_dir")
@json_option
@gateway_options
def bundle_info_command(bundle_dir: str, options: GatewayOptions) -> None:
    """Print what a bundle holds and its place in the sequence, without importing it."""
    from .bundle import describe, read_manifest

    with open_gateway(bundle_dir, options) as bundle:
        manifest, signed = read_manifest(bundle, None)
    for line in describe(manifest, signed):
        say(line)
    report_result({**_manifest_summary(manifest), "signed": signed})


@main.command("keygen")
@click.argument("key_path", type=click.Path(dir_okay=False))
@json_option
def keygen_command(key_path: str) -> None:
    """Make an Ed25519 key pair: KEY_PATH (private, 0600) and KEY_PATH.pub."""
    from pathlib import Path

    from .signing import keygen

    if "://" in key_path:
        raise errors.FerryError(
            f"{key_path}: keygen writes local files (give a path, not a URL)", errors.USAGE
        )
    public = keygen(Path(key_path))
    say(f"private key: {key_path} (keep it outside)")
    say(f"public key:  {public} (give it to the inside's 'ferry import --verify-key')")
    report_result({"private_key": key_path, "public_key": str(public)})


@main.group("snapshot")
def snapshot_group() -> None:
    """Immutable views of the mirror's index, servable as channels (TARGET/snapshots/NAME).

    \b
    A snapshot is index files only: its packages are the mirror's own files, which
    are never deleted while a snapshot names them. Point a client at
    <mirror URL>/snapshots/NAME to pin it to the mirror as it was.
    """


def _snapshot_row(snapshot: Any, pins: set[str]) -> dict[str, Any]:
    return {
        "name": snapshot.name,
        "created": snapshot.created or None,
        "by": snapshot.by,
        "complete": snapshot.complete,
        "pinned": snapshot.name in pins,
        "subdirs": snapshot.subdirs,
    }


@snapshot_group.command("create")
@click.argument("target")
@click.argument("name", required=False)
@subdirs_option
@json_option
@gateway_options
def snapshot_create(
    target: str, name: str | None, subdirs: tuple[str, ...], options: GatewayOptions
) -> None:
    """Snapshot the published index of each subdir (all, or --subdir; noarch always).

    NAME defaults to the UTC date-time; an existing name is refused."""
    from . import snapshots
    from .channelpage import refresh_channel_page

    with open_gateway(target, options) as gateway:
        snapshot = snapshots.create(gateway, name or snapshots.default_name(), subdirs or None)
        refresh_channel_page(gateway)
    records = sum(f["records"] for f in snapshot.subdirs.values())
    say(
        f"snapshot {snapshot.name}: {plural(records, 'record')} in "
        f"{', '.join(sorted(snapshot.subdirs))}; use {redact(target).rstrip('/')}/snapshots/"
        f"{snapshot.name} as a channel"
    )
    report_result(_snapshot_row(snapshot, set()))


@snapshot_group.command("list")
@click.argument("target")
@json_option
@gateway_options
def snapshot_list(target: str, options: GatewayOptions) -> None:
    """Every snapshot, oldest first: created, records per subdir, pinned."""
    from . import snapstore

    with open_gateway(target, options) as gateway:
        found, pins = snapstore.all_snapshots(gateway), snapstore.pinned(gateway)
    for snapshot in found:
        if not snapshot.complete:
            say(f"{snapshot.name:24} incomplete (a killed create or delete: delete it)")
            continue
        items = sorted(snapshot.subdirs.items())
        counts = ", ".join(f"{s} {f.get('records', '?')}" for s, f in items)
        pin = "  pinned" if snapshot.name in pins else ""
        say(f"{snapshot.name:24} {snapshot.created}  {snapshot.by:6} {counts}{pin}")
    report_result({"snapshots": [_snapshot_row(s, pins) for s in found]})


@snapshot_group.command("show")
@click.argument("target")
@click.argument("name")
@json_option
@gateway_options
def snapshot_show(target: str, name: str, options: GatewayOptions) -> None:
    """One snapshot: when and by what it was taken, and per subdir what it holds."""
    from . import snapshots, snapstore

    with open_gateway(target, options) as gateway:
        snapshot, pins = snapshots.get(gateway, name), snapstore.pinned(gateway)
    row = _snapshot_row(snapshot, pins)
    say(f"snapshot {name}: created {row['created'] or '?'} by {row['by']}")
    say(f"  {'complete' if snapshot.complete else 'incomplete'}; pinned: {row['pinned']}")
    for subdir, figures in sorted(snapshot.subdirs.items()):
        say(
            f"  {subdir}: {plural(figures.get('records', 0), 'record')}, "
            f"{plural(figures.get('packages', 0), 'name')}, {human_size(figures.get('bytes', 0))}"
        )
    report_result(row)


@snapshot_group.command("diff")
@click.argument("target")
@click.argument("a")
@click.argument("b")
@json_option
@gateway_options
def snapshot_diff(target: str, a: str, b: str, options: GatewayOptions) -> None:
    """What changed from snapshot A to B (either may be 'live'), by file name."""
    from . import snapshots

    with open_gateway(target, options) as gateway:
        changes = snapshots.diff(gateway, a, b)
    marks = {"added": "+", "removed": "-", "changed": "~"}
    for subdir, kinds in changes.items():
        for kind, files in kinds.items():
            for filename in files:
                say(f"{marks[kind]} {subdir}/{filename}")
    if not changes:
        say(f"{a} and {b} publish the same records")
    report_result({"a": a, "b": b, "subdirs": changes})


@snapshot_group.command("delete")
@click.argument("target")
@click.argument("name")
@json_option
@gateway_options
def snapshot_delete(target: str, name: str, options: GatewayOptions) -> None:
    """Delete a snapshot's index (not a pinned one). Files only it named become due
    for deletion after the grace (7 days); 'ferry gc' removes them then."""
    from . import snapshots
    from .channelpage import refresh_channel_page

    with open_gateway(target, options) as gateway:
        snapshots.delete(gateway, name)
        refresh_channel_page(gateway)
    say(f"snapshot {name} deleted")
    report_result({"deleted": name})


def _pin(target: str, name: str, pin: bool, options: GatewayOptions) -> None:
    from . import snapshots
    from .channelpage import refresh_channel_page

    with open_gateway(target, options) as gateway:
        snapshots.set_pin(gateway, name, pin)
        refresh_channel_page(gateway)
    say(f"snapshot {name} {'pinned' if pin else 'unpinned'}")
    report_result({"name": name, "pinned": pin})


@snapshot_group.command("pin")
@click.argument("target")
@click.argument("name")
@json_option
@gateway_options
def snapshot_pin(target: str, name: str, options: GatewayOptions) -> None:
    """Keep a snapshot whatever a job's snapshots: keep says; delete refuses it."""
    _pin(target, name, True, options)


@snapshot_group.command("unpin")
@click.argument("target")
@click.argument("name")
@json_option
@gateway_options
def snapshot_unpin(target: str, name: str, options: GatewayOptions) -> None:
    """Let a snapshot go again (keep and delete may remove it)."""
    _pin(target, name, False, options)


@snapshot_group.command("restore")
@click.argument("target")
@click.argument("name")
@subdirs_option
@click.option("--hold", is_flag=True, help="Pause sync of these subdirs until 'release'.")
@json_option
@gateway_options
def snapshot_restore(
    target: str, name: str, subdirs: tuple[str, ...], hold: bool, options: GatewayOptions
) -> None:
    """Republish the live channel as the snapshot has it (a rollback).

    JLAP clients follow it like any update. The next sync moves the channel forward
    again, unless --hold: then sync refuses these subdirs until 'ferry snapshot release'."""
    from . import snapshots
    from .channelpage import refresh_channel_page

    with open_gateway(target, options) as gateway:
        done = snapshots.restore(gateway, name, subdirs or None, hold)
        refresh_channel_page(gateway)
    for item in done:
        say(f"{item.subdir}: restored {name} ({item.before} -> {plural(item.records, 'record')})")
    if hold:
        say(f"held: ferry sync refuses {', '.join(d.subdir for d in done)} until released")
    report_result(
        {"snapshot": name, "hold": hold, "subdirs": [msgspec.structs.asdict(d) for d in done]}
    )


@snapshot_group.command("release")
@click.argument("target")
@subdirs_option
@json_option
@gateway_options
def snapshot_release(target: str, subdirs: tuple[str, ...], options: GatewayOptions) -> None:
    """Lift the hold 'restore --hold' put on subdirs: sync moves them forward again."""
    from . import snapshots

    with open_gateway(target, options) as gateway:
        released = snapshots.release(gateway, subdirs or None)
    say(f"released {', '.join(released)}" if released else "no subdir was held")
    report_result({"released": released})


def console() -> None:
    """The ``ferry`` command: :func:`main`, then the process ends at once. What is
    left then is the operating system's to free: the interpreter's own teardown
    (every module's objects freed one by one, a last collection) cost 7-10 ms of every
    run. Not done by :func:`main` itself, which tests call many times in one process."""
    _open_standard_streams()
    try:
        main()
    except SystemExit as stop:
        _end(stop.code)
    except OSError as exc:  # click's own output (--help, --version) was not written
        _end(_output_failed(exc, errors.OK))
    finally:
        gc.freeze()  # a bug of ours ends the slow way: its collections skip all this


def _end(code: str | int | None) -> None:
    """Exit with ``code`` as the interpreter would, without its teardown: what its
    exit runs for others (``atexit``: logging's flush) runs first, and the standard
    streams are flushed. A thread still running would be cut off: then the
    interpreter's exit, which waits for it."""
    if threading.active_count() > 1:
        sys.exit(code)
    if isinstance(code, str):  # sys.exit("words"): the words on stderr, as Python does
        with contextlib.suppress(OSError, ValueError):
            print(code, file=sys.stderr)
        code = errors.FAILED
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except OSError as exc:
        code = _output_failed(exc, code or 0)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code or 0)


def _output_failed(exc: OSError, code: int) -> int:
    """Standard output failed as the process ends: a reader that went away (``ferry
    --help | head -1``) changes nothing, as in :func:`out`; a full disk is one line,
    not a traceback, and a failure. What is still buffered goes nowhere."""
    _stdout_to_devnull()
    if isinstance(exc, BrokenPipeError):
        return code
    with contextlib.suppress(OSError, ValueError):
        print(f"ferry: error: standard output: cannot write: {exc.strerror}", file=sys.stderr)
    return errors.FAILED


def _open_standard_streams() -> None:
    """Started with stdin, stdout or stderr closed (cron's ``>&-``), a process hands
    their numbers to the next files it opens, and a print or a worker's pipe would
    land in the wrong one: each closed one is /dev/null instead."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:  # what Python makes of a closed one at start
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115
