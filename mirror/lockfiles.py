"""The packages a lockfile names: "mirror exactly what this lockfile needs".

Three forms are read: pixi.lock (through py-rattler's lock-file support, so every
version of the format it knows), conda-lock's ``conda-lock.yml``, and ``@EXPLICIT``
files (``conda list --explicit --md5`` or ``--sha256``). Each locked package is a
URL ``<channel>/<subdir>/<file>`` and its hashes; which channel is the job's is
decided by the sync (:func:`belongs_to`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from .yamlread import error_line

HEX = re.compile(r"[0-9a-f]+")


class LockfileError(ValueError):
    """A lockfile that cannot be read; its text says why."""


class Locked(msgspec.Struct, frozen=True):
    channel: str  # the channel URL as the lockfile has it
    subdir: str
    filename: str
    name: str
    sha256: str | None
    md5: str | None
    lockfile: str  # where it was locked, for messages

    @property
    def where(self) -> str:
        return f"{self.subdir}/{self.filename} (locked in {self.lockfile})"


def _split(url: str, lockfile: str, sha256: Any = None, md5: Any = None) -> Locked:
    channel, _, rest = url.split("#", 1)[0].rstrip("/").rpartition("/")
    channel, _, subdir = channel.rpartition("/")
    filename = rest
    if not channel or not subdir or not filename.endswith((".conda", ".tar.bz2")):
        raise LockfileError(f"'{url[:200]}' is not a package URL (<channel>/<subdir>/<file>)")
    name = filename.rsplit("-", 2)[0]
    return Locked(channel, subdir, filename, name, _digest(sha256), _digest(md5), lockfile)


def _digest(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str) and HEX.fullmatch(value.lower()):
        return value.lower()
    return None


def _explicit(text: str, lockfile: str) -> list[Locked]:
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "@")):
            continue
        url, _, fragment = line.partition("#")
        sha256 = fragment[7:] if fragment.startswith("sha256:") else None
        md5 = fragment if fragment and sha256 is None else None
        found.append(_split(url, lockfile, sha256, md5))
    return found


def _conda_lock(data: dict[str, Any], lockfile: str) -> list[Locked]:
    found = []
    packages = data.get("package") or []
    if not isinstance(packages, list):
        raise LockfileError("'package' is not a list of packages")
    for package in packages:
        if not isinstance(package, dict) or package.get("manager", "conda") != "conda":
            continue  # pip packages are not the channel's
        hashes = package.get("hash") or {}
        if not isinstance(hashes, dict):
            raise LockfileError(f"the 'hash' of {str(package.get('url'))[:200]!r} is not a mapping")
        found.append(
            _split(str(package.get("url", "")), lockfile, hashes.get("sha256"), hashes.get("md5"))
        )
    return found


def _pixi(path: Path, lockfile: str) -> list[Locked]:
    import rattler

    try:
        lock = rattler.LockFile.from_path(path)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # rattler's own error types; a panic is a BaseException
        raise LockfileError(
            f"not a pixi.lock rattler can read ({str(exc).splitlines()[0]})"
        ) from None
    found = []
    for _, environment in lock.environments():
        for records in environment.conda_repodata_records().values():
            for record in records:
                found.append(_split(str(record.url), lockfile, record.sha256, record.md5))
    return found


def read_lockfile(path: Path) -> list[Locked]:
    """Every conda package ``path`` locks; :class:`LockfileError` when it is none
    of the forms above."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockfileError("no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockfileError(f"cannot read it ({exc})") from None
    if re.search(r"^@EXPLICIT\s*$", text, re.M):
        return _explicit(text, path.name)
    import yaml  # a job without lockfiles never imports it (see yamlread)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = error_line(exc)
        where = f" (line {line})" if line else ""
        raise LockfileError(f"neither @EXPLICIT nor valid YAML{where}") from None
    if isinstance(data, dict) and "package" in data and "metadata" in data:
        return _conda_lock(data, path.name)
    if isinstance(data, dict) and "environments" in data:
        return _pixi(path, path.name)
    raise LockfileError("not a pixi.lock, conda-lock.yml or @EXPLICIT file")


def belongs_to(locked: Locked, source: str) -> bool:
    """Whether a locked package is of the job's channel: the same URL, or a channel
    of the same name (a lockfile made against conda-forge, mirrored from a copy)."""
    mine, theirs = source.rstrip("/"), locked.channel.rstrip("/")
    return mine == theirs or mine.rsplit("/", 1)[-1] == theirs.rsplit("/", 1)[-1]
