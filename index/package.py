"""Read one conda package as a stream: its metadata and size, md5, sha256 in one pass.

Nothing is unpacked to disk and no member is ever written anywhere: a package is
only a source of a few small JSON documents. Every byte goes through the hashes
exactly once, whatever the format, so indexing costs about one read of the file.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import struct
import zlib
from pathlib import PurePosixPath
from typing import Any, BinaryIO

import msgspec
import orjson
import zstandard

CHUNK = 1 << 20
# Metadata members are small; these caps make a decompression bomb a skipped package.
MAX_INFO_COMPRESSED = 128 << 20
MAX_INFO_EXPANDED = 512 << 20
MAX_MEMBER = 64 << 20
WANTED = {
    "info/index.json",
    "info/about.json",
    "info/run_exports.json",
    "info/files",
    "info/has_prefix",
    "info/paths.json",
}


class BadPackage(Exception):
    """The file cannot be indexed; ``str()`` says why in a few words."""


class PackageMeta(msgspec.Struct):
    """What an index needs from one package file."""

    filename: str
    size: int
    md5: str
    sha256: str
    index: dict[str, Any]
    about: dict[str, Any] = {}
    run_exports: dict[str, Any] = {}
    features: dict[str, bool] = {}  # channeldata flags


class _Hashing(io.RawIOBase):
    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._stream.read(CHUNK if size is None or size < 0 else size) or b""
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def upto(self, count: int) -> bytes:
        """``count`` bytes, fewer only at the end: a network stream may hand out less
        per call (an HTTP body piece, one SFTP answer), a zip header may not."""
        parts, need = [], count
        while need and (data := self.read(min(need, CHUNK))):
            parts.append(data)
            need -= len(data)
        return b"".join(parts)

    def exactly(self, count: int) -> bytes:
        data = self.upto(count)
        if len(data) != count:
            raise BadPackage("truncated")
        return data

    def skip(self, count: int) -> None:
        while count:
            data = self.read(min(count, CHUNK))
            if not data:
                raise BadPackage("truncated")
            count -= len(data)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _Capped(io.RawIOBase):
    """Fails once more than ``limit`` bytes come out: a decompression bomb guard."""

    def __init__(self, stream: Any, limit: int) -> None:
        super().__init__()
        self._stream, self._left = stream, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        self._left -= len(data)
        if self._left < 0:
            raise BadPackage("metadata expands beyond the size limit (decompression bomb?)")
        buffer[: len(data)] = data
        return len(data)


def _safe_member(name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise BadPackage(f"member name {name!r} escapes the package")


def _collect(tar_stream: BinaryIO, found: dict[str, bytes], stop_after_info: bool) -> None:
    """Pull the wanted members out of a tar stream, checking every member's name."""
    import tarfile  # read packages only: not loaded for a mirror's upstream records

    seen_info = False
    try:
        with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
            for member in tar:
                _safe_member(member.name)
                name = member.name.lstrip("./") if member.name.startswith("./") else member.name
                if name.startswith("info/"):
                    seen_info = True
                elif stop_after_info and seen_info and "info/index.json" in found:
                    return  # conda-build writes info/ first; the payload needs no parsing
                if name in WANTED and member.isfile():
                    if member.size > MAX_MEMBER:
                        raise BadPackage(f"{name} is implausibly large")
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[name] = handle.read()
    except (tarfile.TarError, EOFError, OSError, zstandard.ZstdError, zlib.error) as exc:
        raise BadPackage(f"damaged archive ({type(exc).__name__})") from None


def _read_tar_bz2(hashing: _Hashing, found: dict[str, bytes]) -> None:
    _collect(_Capped(bz2.BZ2File(hashing), 1 << 40), found, stop_after_info=True)  # type: ignore[arg-type]


def _zip64_sizes(extra: bytes, csize: int, usize: int) -> tuple[int, int]:
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + length]
        if tag == 1:
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
        at += 4 + length
    return csize, usize


def _read_conda(hashing: _Hashing, found: dict[str, bytes]) -> None:
    """Walk the zip's local headers in order: no seeking, so any stream will do."""
    seen_info = False
    while True:
        signature = hashing.upto(4)
        if signature != b"PK\x03\x04":
            if signature in (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06") and seen_info:
                return
            if not signature:
                raise BadPackage("empty file" if hashing.size == 0 else "truncated")
            raise BadPackage("not a .conda archive (no info component)")
        header = hashing.exactly(26)
        _, flags, method, _, _, _, csize, usize, name_len, extra_len = struct.unpack(
            "<HHHHHIIIHH", header
        )
        name = hashing.exactly(name_len).decode("utf-8", "replace")
        csize, usize = _zip64_sizes(hashing.exactly(extra_len), csize, usize)
        _safe_member(name)
        if flags & 0x08:
            raise BadPackage("zip members with trailing data descriptors are not supported")
        if not (name.startswith("info-") and name.endswith(".tar.zst")):
            hashing.skip(csize)
            continue
        if csize > MAX_INFO_COMPRESSED:
            raise BadPackage("info component is implausibly large")
        data = hashing.exactly(csize)
        if method == 8:
            inflate = zlib.decompressobj(-15)
            try:
                data = inflate.decompress(data, MAX_INFO_COMPRESSED)
            except zlib.error:
                raise BadPackage("damaged archive (deflate)") from None
            if inflate.unconsumed_tail:
                raise BadPackage("info component is implausibly large")
        elif method != 0:
            raise BadPackage(f"unsupported zip compression method {method}")
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        _collect(_Capped(reader, MAX_INFO_EXPANDED), found, stop_after_info=False)  # type: ignore[arg-type]
        seen_info = True


def _json(found: dict[str, bytes], name: str) -> dict[str, Any]:
    if name not in found:
        return {}
    try:
        value = orjson.loads(found[name])
    except orjson.JSONDecodeError:
        raise BadPackage(f"{name} is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadPackage(f"{name} is not a JSON object")
    return value


def _features(found: dict[str, bytes], name: str) -> dict[str, bool]:
    """The channeldata flags: scripts and prefix placeholders the package carries."""
    if "info/files" in found:
        files = found["info/files"].decode("utf-8", "replace").splitlines()
    else:
        paths = _json(found, "info/paths.json").get("paths", [])
        if not isinstance(paths, list):
            raise BadPackage("info/paths.json 'paths' is not a list")
        files = [
            p["_path"] for p in paths if isinstance(p, dict) and isinstance(p.get("_path"), str)
        ]
    prefix_modes = [
        line.split()[1] if len(line.split()) >= 3 else "text"
        for line in found.get("info/has_prefix", b"").decode("utf-8", "replace").splitlines()
        if line.strip()
    ]

    def script(kind: str) -> bool:
        return f"bin/.{name}-{kind}.sh" in files or f"Scripts/.{name}-{kind}.bat" in files

    return {
        "activate.d": any(f.startswith("etc/conda/activate.d/") for f in files),
        "deactivate.d": any(f.startswith("etc/conda/deactivate.d/") for f in files),
        "post_link": script("post-link"),
        "pre_link": script("pre-link"),
        "pre_unlink": script("pre-unlink"),
        "binary_prefix": "binary" in prefix_modes,
        "text_prefix": "text" in prefix_modes,
    }


def read_package(filename: str, stream: BinaryIO) -> PackageMeta:
    """Metadata and digests of the package ``filename`` whose bytes ``stream`` yields."""
    hashing = _Hashing(stream)
    found: dict[str, bytes] = {}
    if filename.endswith(".conda"):
        _read_conda(hashing, found)
    elif filename.endswith(".tar.bz2"):
        _read_tar_bz2(hashing, found)
    else:
        raise BadPackage("not a .conda or .tar.bz2 file")
    hashing.drain()
    if hashing.size == 0:
        raise BadPackage("empty file")
    index = _json(found, "info/index.json")
    if not index:
        raise BadPackage("no info/index.json")
    return PackageMeta(
        filename=filename,
        size=hashing.size,
        md5=hashing.md5.hexdigest(),
        sha256=hashing.sha256.hexdigest(),
        index=index,
        about=_json(found, "info/about.json"),
        run_exports=_json(found, "info/run_exports.json"),
        features=_features(found, str(index.get("name"))),
    )
