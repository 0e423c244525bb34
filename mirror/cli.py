"""The ``ferry`` command line: parse, call one function, print.

Exit statuses are in :mod:`errors`; every expected failure is one line on stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, TypeVar

import click

from conda_ferry.gateways import (
    GatewayError,
    GatewayOptions,
    LockHeld,
    UsageError,
    copy_url,
    list_url,
    open_gateway,
    redact,
    split_url,
)
from conda_ferry.index.publish import OutputOptions

from . import errors

if TYPE_CHECKING:
    from .sync import SyncReport

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("ferry")


class FerryGroup(click.Group):
    """Turns every expected failure into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LockHeld as exc:
            _fail(str(exc), errors.LOCKED)
        except UsageError as exc:
            _fail(str(exc), errors.USAGE)
        except GatewayError as exc:
            _fail(str(exc), errors.FAILED)
        except errors.FerryError as exc:
            _fail(str(exc), exc.code)
        except KeyboardInterrupt:
            _fail("interrupted", errors.INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug of ours: still one line, the trace under -v
            log.debug("internal error", exc_info=True)
            _fail(
                f"internal error: {type(exc).__name__}: {redact(str(exc))} "
                "(a bug in ferry; run with -v for the traceback and report it)",
                errors.FAILED,
            )


def _fail(message: str, code: int) -> None:
    click.echo(f"ferry: error: {message}", err=True)
    sys.exit(code)


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "paramiko", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(cls=FerryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("conda-ferry"), prog_name="ferry")
@click.option("-v", "--verbose", count=True, help="More detail (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """Mirror conda channels across air gaps and publish custom channels.

    \b
    URLs: a local path or file://, http(s)://host/path (read-only),
    s3://bucket/prefix, ftp(s)://user@host:port/path, sftp://user@host:port/path
    (/~/ for the home directory). See docs/gateways.md for credentials.

    \b
    Exit status: 0 ok, 1 failed, 2 usage or configuration error,
    3 partial (some packages failed), 75 target locked by another run,
    130 interrupted.
    """
    setup_logging(-1 if quiet else verbose)


def _click_option(spec: dataclasses.Field[Any]) -> Callable[[F], F]:
    """The command-line form of one declared option field."""
    flag = f"--{spec.name.replace('_', '-')}"
    meta, default = spec.metadata, spec.default
    where = ", ".join(meta.get("protocols") or ())
    help_text = f"{meta['help']} ({where})" if where else meta["help"]
    if isinstance(default, bool):
        if default:
            return click.option(f"{flag}/--no-{flag[2:]}", spec.name, default=True, help=help_text)
        return click.option(flag, spec.name, is_flag=True, help=help_text)
    if isinstance(default, (int, float)):
        kind = click.IntRange if isinstance(default, int) else click.FloatRange
        bounds = kind(meta.get("minimum"), meta.get("maximum"))
        return click.option(
            flag, spec.name, type=bounds, default=default, show_default=True, help=help_text
        )
    if meta.get("kind") == "file":
        path = click.Path(exists=True, dir_okay=False)
        return click.option(flag, spec.name, type=path, help=help_text)
    return click.option(flag, spec.name, help=help_text)


def declared_options(cls: type, param: str) -> Callable[[F], F]:
    """Every declared field of ``cls`` as an option; the command gets one ``cls``
    instance as ``param``. The job file's keys come from the same fields."""
    names = [spec.name for spec in dataclasses.fields(cls)]

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[param] = cls(**{name: kwargs.pop(name) for name in names})
            return fn(*args, **kwargs)

        for spec in reversed(dataclasses.fields(cls)):
            wrapper = _click_option(spec)(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate


gateway_options = declared_options(GatewayOptions, "options")


def _human(size: int) -> str:
    if size < 0:
        return "-"
    value = float(size)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)


@main.command("ls")
@click.argument("url")
@click.option("-r", "--recursive", is_flag=True, help="List every file below URL.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@gateway_options
def ls_command(url: str, recursive: bool, as_json: bool, options: GatewayOptions) -> None:
    """List a directory with sizes and times: a quick check of credentials and reach."""
    for entry in list_url(url, recursive, options):
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "path": entry.path,
                        "size": entry.size,
                        "mtime": entry.mtime,
                        "dir": entry.is_dir,
                    }
                )
            )
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.mtime)) if entry.mtime else "-"
        name = f"{entry.path}/" if entry.is_dir else entry.path
        click.echo(f"{_human(entry.size):>8}  {when:16}  {name}")


@main.command("cp")
@click.argument("src")
@click.argument("dst")
@click.option("--sha256", help="Refuse the copy unless the bytes have this digest.")
@gateway_options
def cp_command(src: str, dst: str, sha256: str | None, options: GatewayOptions) -> None:
    """Copy one file between any two URLs: streamed, verified, atomic.

    DST ending in / is a directory: the file keeps its name.
    """
    started = time.monotonic()
    copied = copy_url(src, dst, sha256, options)
    log.info(
        "copied %s to %s: %d bytes in %.1fs, sha256 %s",
        redact(src),
        redact(dst),
        copied.size,
        time.monotonic() - started,
        copied.sha256,
    )


def write_report(path: str, report: dict[str, Any]) -> None:
    """Write a ``--json`` report atomically: monitoring never reads half a file."""
    directory, name = split_url(path) if "/" in path else (".", path)
    with open_gateway(directory) as gateway:
        gateway.write_bytes(name, json.dumps(report, indent=2, sort_keys=True).encode() + b"\n")


@main.command("index")
@click.argument("channel")
@click.option("--subdir", "subdirs", multiple=True, help="Index only this subdir (repeatable).")
@click.option("--patch-instructions", help="A patch_instructions.json to apply.")
@click.option("--patch-package", help="A repodata-patches .tar.bz2 package to apply.")
@declared_options(OutputOptions, "outputs")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Packages read in parallel [default: number of cores].",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where the index cache lives.")
@click.option("--strict", is_flag=True, help="Exit non-zero when any package is skipped.")
@click.option("--json", "json_path", help="Write a summary for monitoring to this file.")
@gateway_options
def index_command(
    channel: str,
    subdirs: tuple[str, ...],
    patch_instructions: str | None,
    patch_package: str | None,
    outputs: OutputOptions,
    jobs: int | None,
    cache_dir: str | None,
    strict: bool,
    json_path: str | None,
    options: GatewayOptions,
) -> None:
    """Write repodata.json (+ .zst), repodata.jlap and shards for a channel of packages.

    CHANNEL is a directory of subdirs (noarch, linux-64, ...) on any writable URL.
    Only new or changed packages are read; an unchanged channel is left untouched.
    Records of packages mirrored by 'ferry sync' are kept as upstream serves them.
    """
    import os
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
    click.echo(
        f"indexed {report['url']}: {report['packages']} packages in {len(summary.subdirs)} "
        f"subdirs ({report['read']} read, {report['cached']} from cache, {len(skipped)} "
        f"skipped); {len(report['written'])} files written in {report['seconds']:.2f}s"
    )
    if json_path:
        write_report(json_path, report)
    if strict and skipped:
        raise errors.FerryError(f"{len(skipped)} package(s) skipped (--strict)")


def _print_sync(report: SyncReport, quiet: bool) -> None:
    """One line per subdir; under -q (cron) only the subdirs that need attention."""
    from .sync import Status

    for sub in report.subdirs:
        if quiet and not sub.status.needs_attention:
            continue
        if sub.status is Status.PLANNED:
            click.echo(
                f"{sub.subdir:14} add {sub.added:6} ({_human(sub.bytes)})  "
                f"update {sub.updated:6}  remove {sub.removed:6}"
            )
            continue
        line = f"{sub.subdir:14} {sub.status.value:10}"
        if sub.status in (Status.SYNCED, Status.PARTIAL):
            line += (
                f" added {sub.added}, updated {sub.updated}, removed {sub.removed}, "
                f"{_human(sub.bytes)}"
            )
        click.echo(line + (f"  {sub.message}" if sub.message else ""))
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
@click.option("--json", "json_path", help="Write the summary (or plan) to this file.")
@click.pass_context
def sync_command(
    ctx: click.Context,
    job_file: str,
    dry_run: bool,
    explain: str | None,
    force: bool,
    json_path: str | None,
) -> None:
    """Mirror the subdirs of an upstream channel as JOB.yaml describes.

    Quiet when nothing changed (one request per subdir), loud when something failed.
    Exit 0 ok, 1 failed, 2 bad config, 3 partial (named packages failed), 75 locked.
    """
    from .config import load_job
    from .progress import make_progress
    from .sync import SyncRun

    job = load_job(job_file)
    quiet = logging.getLogger().level > logging.INFO
    progress = make_progress(quiet)
    try:
        report, explanation = SyncRun(job, progress, dry_run=dry_run, force=force).run(explain)
    finally:
        progress.close()
    if explain is not None:
        for line in explanation:
            click.echo(line)
        return
    _print_sync(report, quiet)
    for note in report.dropped_dependencies:
        click.echo(f"  dependency not mirrored: {note}", err=True)
    totals = report.as_dict()["totals"]
    if not dry_run:
        log.info(
            "done in %.1fs: %d added, %d updated, %d removed, %s",
            report.seconds,
            totals["added"],
            totals["updated"],
            totals["removed"],
            _human(totals["bytes"]),
        )
    if json_path:
        write_report(json_path, report.as_dict())
    if report.exit_code:
        ctx.exit(report.exit_code)


@main.command("verify")
@click.argument("target")
@click.option("--subdir", "subdirs", multiple=True, help="Only this subdir (repeatable).")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Packages re-read in parallel.",
)
@click.option("--json", "json_path", help="Write the findings to this file.")
@gateway_options
@click.pass_context
def verify_command(
    ctx: click.Context,
    target: str,
    subdirs: tuple[str, ...],
    jobs: int,
    json_path: str | None,
    options: GatewayOptions,
) -> None:
    """Re-read every package the repodata lists: report missing, extra and corrupt files."""
    from .verify import verify_channel

    with open_gateway(target, options) as gateway:
        findings = verify_channel(gateway, list(subdirs) or None, jobs)
    for kind in ("missing", "corrupt", "extra"):
        for item in findings[kind]:
            click.echo(f"{kind}: {item}")
    click.echo(
        f"verified {findings['checked']} packages: {len(findings['missing'])} missing, "
        f"{len(findings['corrupt'])} corrupt, {len(findings['extra'])} extra"
    )
    if json_path:
        write_report(json_path, findings)
    if findings["missing"] or findings["corrupt"] or findings["extra"]:
        ctx.exit(errors.FAILED)


@main.command("publish")
@click.argument("packages", nargs=-1, required=True)
@click.option("--to", "channel", required=True, help="The custom channel (any writable URL).")
@click.option("--subdir", help="Put the packages here [default: each package's own subdir].")
@gateway_options
def publish_command(
    packages: tuple[str, ...], channel: str, subdir: str | None, options: GatewayOptions
) -> None:
    """Add local packages to a custom channel and re-index the subdirs they went to."""
    from .publish import publish_packages

    with open_gateway(channel, options) as gateway:
        placed = publish_packages(gateway, list(packages), subdir, options)
    for path in placed:
        click.echo(f"published {path}")


def _volume_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from .yamldoc import parse_size

    size = parse_size(value)
    if size is None or size < 1 << 20:
        raise click.BadParameter(f"{value!r} is not a size of at least 1MiB (e.g. 4GB or 700MiB)")
    return size


@main.command("export")
@click.argument("mirror")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option(
    "--since", metavar="BUNDLE_ID", help="Changes since this export [default: since the last one]."
)
@click.option("--full", is_flag=True, help="Everything, for a first or rebuilding transfer.")
@click.option("--subdir", "subdirs", multiple=True, help="Only this subdir (repeatable).")
@click.option(
    "--volume-size",
    default="4GB",
    show_default=True,
    callback=_volume_size,
    help="Largest volume; bigger packages are split in parts.",
)
@click.option(
    "--sign",
    "sign_key",
    type=click.Path(dir_okay=False),
    help="Sign the manifest with this Ed25519 private key (see 'ferry keygen').",
)
@click.option("--json", "json_path", help="Write a summary to this file.")
@gateway_options
def export_command(
    mirror: str,
    bundle_dir: str,
    since: str | None,
    full: bool,
    subdirs: tuple[str, ...],
    volume_size: int,
    sign_key: str | None,
    json_path: str | None,
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
        click.echo(line)
    if json_path:
        write_report(
            json_path,
            {
                "id": manifest.id,
                "follows": manifest.follows,
                "full": manifest.full,
                "files": len(manifest.files),
                "bytes": sum(f.size for f in manifest.files),
            },
        )


@main.command("import")
@click.argument("bundle_dir")
@click.option("--to", "target", required=True, help="The inside mirror (any writable URL).")
@click.option(
    "--verify-key",
    type=click.Path(dir_okay=False),
    help="Refuse bundles not signed by this Ed25519 public key.",
)
@click.option(
    "--allow-gap",
    is_flag=True,
    help="Accept a bundle that does not follow the last "
    "one imported (removals and hot-fixes in between are lost).",
)
@click.option("--json", "json_path", help="Write a summary to this file.")
@gateway_options
def import_command(
    bundle_dir: str,
    target: str,
    verify_key: str | None,
    allow_gap: bool,
    json_path: str | None,
    options: GatewayOptions,
) -> None:
    """Verify a bundle completely, then apply it: packages, repodata, removals."""
    from .bundle import ImportStatus, import_bundle

    with open_gateway(bundle_dir) as bundle, open_gateway(target, options) as gateway:
        result = import_bundle(bundle, gateway, verify_key, allow_gap)
    if result.status is ImportStatus.ALREADY_APPLIED:
        click.echo(f"bundle {result.id} was applied already; nothing to do")
    else:
        click.echo(
            f"applied bundle {result.id}: {result.packages} packages "
            f"({_human(result.bytes)}), {result.removed} removed"
        )
    if json_path:
        write_report(json_path, {**result.__dict__, "status": result.status.value})


@main.command("bundle-info")
@click.argument("bundle_dir")
def bundle_info_command(bundle_dir: str) -> None:
    """Print what a bundle holds and its place in the sequence, without importing it."""
    from .bundle import describe, read_manifest

    with open_gateway(bundle_dir) as bundle:
        manifest, signed = read_manifest(bundle, None)
    for line in describe(manifest, signed):
        click.echo(line)


@main.command("keygen")
@click.argument("key_path", type=click.Path(dir_okay=False))
def keygen_command(key_path: str) -> None:
    """Make an Ed25519 key pair: KEY_PATH (private, 0600) and KEY_PATH.pub."""
    from pathlib import Path

    from .signing import keygen

    public = keygen(Path(key_path))
    click.echo(
        f"private key: {key_path} (keep it outside)\npublic key:  {public} "
        "(give it to the inside's 'ferry import --verify-key')"
    )
