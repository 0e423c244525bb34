"""The ``ferry`` command line.

Exit status: 0 ok, 1 failed, 2 usage or configuration error, 3 partial (some
packages failed, the rest was published), 75 the target is locked by another run.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, TypeVar

import click

from conda_ferry.gateways import (
    Gateway,
    GatewayError,
    GatewayOptions,
    LockHeld,
    NotFound,
    UsageError,
    VerifyingReader,
    open_gateway,
    redact,
    split_url,
)

from . import errors

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
            _fail("interrupted", 130)
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
    3 partial (some packages failed), 75 target locked by another run.
    """
    setup_logging(-1 if quiet else verbose)


def gateway_options(fn: F) -> F:
    """The connection options every command that opens a URL accepts."""
    decorators = [
        click.option(
            "--timeout",
            type=float,
            default=30.0,
            show_default=True,
            help="Seconds before a silent connection counts as failed.",
        ),
        click.option(
            "--ca-bundle",
            type=click.Path(exists=True, dir_okay=False),
            help="CA certificates for TLS (http, s3, ftps).",
        ),
        click.option("--no-verify-tls", is_flag=True, help="Do not verify TLS certificates."),
        click.option("--endpoint-url", help="S3 endpoint (else AWS_ENDPOINT_URL)."),
        click.option("--region", help="S3 region."),
        click.option("--profile", help="AWS profile for s3:// URLs."),
        click.option(
            "--key-file",
            type=click.Path(exists=True, dir_okay=False),
            help="SSH private key for sftp:// URLs.",
        ),
        click.option(
            "--known-hosts",
            type=click.Path(exists=True, dir_okay=False),
            help="known_hosts file for sftp:// (default ~/.ssh/known_hosts).",
        ),
        click.option(
            "--insecure-host-key", is_flag=True, help="Accept any SSH host key (insecure)."
        ),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["options"] = GatewayOptions(
            timeout=kwargs.pop("timeout"),
            ca_bundle=kwargs.pop("ca_bundle"),
            verify_tls=not kwargs.pop("no_verify_tls"),
            endpoint_url=kwargs.pop("endpoint_url"),
            region=kwargs.pop("region"),
            profile=kwargs.pop("profile"),
            key_file=kwargs.pop("key_file"),
            known_hosts=kwargs.pop("known_hosts"),
            insecure_skip_host_key=kwargs.pop("insecure_host_key"),
        )
        return fn(*args, **kwargs)

    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper  # type: ignore[return-value]


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
    with open_gateway(url, options) as gateway:
        try:
            entries = gateway.list("", recursive=recursive)
        except NotFound:
            parent_url, name = split_url(url)
            if not name:
                raise
            with open_gateway(parent_url, options) as parent:
                entries = [parent.info(name)]
    for entry in entries:
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


def _open_file(url: str, options: GatewayOptions) -> tuple[Gateway, str]:
    directory, name = split_url(url)
    if not name:
        raise UsageError(redact(url), "names no file", "give the URL of a file")
    return open_gateway(directory, options), name


@main.command("cp")
@click.argument("src")
@click.argument("dst")
@click.option("--sha256", help="Refuse the copy unless the bytes have this digest.")
@gateway_options
def cp_command(src: str, dst: str, sha256: str | None, options: GatewayOptions) -> None:
    """Copy one file between any two URLs: streamed, verified, atomic.

    DST ending in / is a directory: the file keeps its name.
    """
    source, name = _open_file(src, options)
    if dst.endswith("/"):
        target, target_name = open_gateway(dst, options), name
    else:
        target, target_name = _open_file(dst, options)
    started = time.monotonic()
    with source, target:
        size = source.info(name).size
        stream = VerifyingReader(
            source.open_read(name), source.display(name), size if size >= 0 else None, sha256
        )
        with stream:
            target.write_atomic(target_name, stream.as_binary(), size if size >= 0 else None)
        log.info(
            "copied %s to %s: %d bytes in %.1fs, sha256 %s",
            source.display(name),
            target.display(target_name),
            stream.count,
            time.monotonic() - started,
            stream.sha256.hexdigest(),
        )


def write_report(path: str, report: dict[str, Any]) -> None:
    """Write a ``--json`` report atomically: monitoring never reads half a file."""
    directory, name = split_url(path) if "/" in path else (".", path)
    with open_gateway(directory) as gateway:
        gateway.write_bytes(name, json.dumps(report, indent=2, sort_keys=True).encode() + b"\n")


def _load_patches(
    patch_instructions: str | None, patch_package: str | None, options: GatewayOptions
) -> dict[str, dict[str, Any]] | None:
    from conda_ferry.index.channel import load_patch_file, load_patch_package
    from conda_ferry.index.patches import BadPatch

    if patch_instructions and patch_package:
        raise UsageError("--patch-instructions", "give either a file or a package, not both")
    source = patch_instructions or patch_package
    if source is None:
        return None
    gateway, name = _open_file(source, options)
    with gateway:
        try:
            if patch_instructions:
                return load_patch_file(gateway, name)
            return load_patch_package(gateway, name)
        except BadPatch as exc:
            raise errors.ConfigError(f"{redact(source)}: {exc}") from None


@main.command("index")
@click.argument("channel")
@click.option("--subdir", "subdirs", multiple=True, help="Index only this subdir (repeatable).")
@click.option("--patch-instructions", help="A patch_instructions.json to apply.")
@click.option("--patch-package", help="A repodata-patches .tar.bz2 package to apply.")
@click.option("--no-jlap", is_flag=True, help="Do not write repodata.jlap.")
@click.option("--no-shards", is_flag=True, help="Do not write sharded repodata (CEP 16).")
@click.option("--no-zst", is_flag=True, help="Do not write repodata.json.zst.")
@click.option("--bz2", is_flag=True, help="Also write repodata.json.bz2.")
@click.option(
    "--zst-level",
    type=click.IntRange(1, 22),
    default=10,
    show_default=True,
    help="zstd level of repodata.json.zst (16-19: smaller, many times slower).",
)
@click.option("--current-repodata", is_flag=True, help="Also write current_repodata.json.")
@click.option(
    "--jlap-max-bytes",
    type=click.IntRange(min=4096),
    default=8 << 20,
    show_default=True,
    help="Trim repodata.jlap once it passes this size.",
)
@click.option(
    "--jlap-max-patch-bytes",
    type=click.IntRange(min=1024),
    default=2 << 20,
    show_default=True,
    help="Leave out patches larger than this.",
)
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
    no_jlap: bool,
    no_shards: bool,
    no_zst: bool,
    bz2: bool,
    zst_level: int,
    current_repodata: bool,
    jlap_max_bytes: int,
    jlap_max_patch_bytes: int,
    jobs: int | None,
    cache_dir: str | None,
    strict: bool,
    json_path: str | None,
    options: GatewayOptions,
) -> None:
    """Write repodata.json (+ .zst), repodata.jlap and shards for a channel of packages.

    CHANNEL is a directory of subdirs (noarch, linux-64, ...) on any writable URL.
    Only new or changed packages are read; an unchanged channel is left untouched.
    """
    import os
    from pathlib import Path

    from conda_ferry.index.channel import IndexOptions, discover_subdirs, index_channel
    from conda_ferry.index.publish import OutputOptions

    from .state import subdir_locks

    patches = _load_patches(patch_instructions, patch_package, options)
    outputs = OutputOptions(
        zst=not no_zst,
        bz2=bz2,
        jlap=not no_jlap,
        shards=not no_shards,
        current=current_repodata,
        zst_level=zst_level,
        jlap_max_bytes=jlap_max_bytes,
        jlap_max_patch_bytes=jlap_max_patch_bytes,
    )
    with open_gateway(channel, options) as gateway:
        if not gateway.writable:
            raise UsageError(
                gateway.display(),
                "cannot index over a read-only protocol",
                "index the channel where its files are stored",
            )
        chosen = list(subdirs) or discover_subdirs(gateway)
        with subdir_locks(gateway, chosen):
            summary = index_channel(
                gateway,
                IndexOptions(
                    subdirs=chosen,
                    outputs=outputs,
                    patch_instructions=patches,
                    jobs=jobs or os.cpu_count() or 2,
                    cache_dir=Path(cache_dir) if cache_dir else None,
                ),
            )
    report = summary.as_dict()
    skipped = report["skipped"]
    click.echo(
        f"indexed {report['url']}: {report['packages']} packages in {len(chosen)} subdirs "
        f"({report['read']} read, {report['cached']} from cache, {len(skipped)} skipped); "
        f"{len(report['written'])} files written in {report['seconds']:.2f}s"
    )
    if json_path:
        write_report(json_path, report)
    if strict and skipped:
        raise errors.FerryError(f"{len(skipped)} package(s) skipped (--strict)")


def _print_sync(report: Any, quiet: bool) -> None:
    """One line per subdir; under -q (cron) only the subdirs that need attention."""
    for sub in report.subdirs:
        if quiet and sub.status in ("up to date", "synced", "planned"):
            continue
        if sub.status == "planned":
            click.echo(
                f"{sub.subdir:14} add {sub.added:6} ({_human(sub.bytes)})  "
                f"update {sub.updated:6}  remove {sub.removed:6}"
            )
            continue
        line = f"{sub.subdir:14} {sub.status:10}"
        if sub.status not in ("up to date", "locked", "failed"):
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
@click.option("--jobs", type=click.IntRange(min=1), default=4, show_default=True)
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


def _size_option(value: str) -> int:
    from .config import parse_size

    size = parse_size(value)
    if size is None or size < 1 << 20:
        raise UsageError(
            "--volume-size", f"{value!r} is not a size of at least 1MiB", "write e.g. 4GB or 700MiB"
        )
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
    volume_size: str,
    sign_key: str | None,
    json_path: str | None,
    options: GatewayOptions,
) -> None:
    """Write the mirror's changes since the last export as a bundle for the air gap."""
    from .bundle import describe, export_bundle

    if since and full:
        raise UsageError("--since", "give --since or --full, not both")
    size = _size_option(volume_size)
    with open_gateway(mirror, options) as gateway:
        manifest = export_bundle(
            gateway, bundle_dir, since, full, list(subdirs) or None, size, sign_key
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
    from .bundle import import_bundle

    with open_gateway(bundle_dir) as bundle, open_gateway(target, options) as gateway:
        result = import_bundle(bundle, gateway, verify_key, allow_gap)
    if result.status == "already applied":
        click.echo(f"bundle {result.id} was applied already; nothing to do")
    else:
        click.echo(
            f"applied bundle {result.id}: {result.packages} packages "
            f"({_human(result.bytes)}), {result.removed} removed"
        )
    if json_path:
        write_report(json_path, dict(result.__dict__))


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
