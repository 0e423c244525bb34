"""Build small, valid conda packages (.conda and .tar.bz2) from a description.

Used by the tests, the benchmarks and the bundled demo channel, so that none of
them needs the network or a conda-build installation.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

EPOCH = 1_700_000_000


@dataclass
class Spec:
    name: str
    version: str = "1.0"
    build: str = "0"
    build_number: int = 0
    subdir: str = "noarch"
    depends: list[str] = field(default_factory=list)
    constrains: list[str] = field(default_factory=list)
    license: str = "MIT"
    timestamp: int = EPOCH * 1000
    noarch: str | None = None
    run_exports: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    summary: str = ""
    track_features: str | None = None

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    def index_json(self) -> dict[str, Any]:
        arch, platform = None, None
        if self.subdir != "noarch":
            platform, _, arch_name = self.subdir.partition("-")
            arch = {"64": "x86_64", "32": "x86"}.get(arch_name, arch_name)
        index: dict[str, Any] = {
            "arch": arch,
            "build": self.build,
            "build_number": self.build_number,
            "depends": self.depends,
            "license": self.license,
            "name": self.name,
            "platform": platform,
            "subdir": self.subdir,
            "timestamp": self.timestamp,
            "version": self.version,
        }
        if self.constrains:
            index["constrains"] = self.constrains
        if self.noarch:
            index["noarch"] = self.noarch
        if self.track_features:
            index["track_features"] = self.track_features
        return index


def _tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _info_members(spec: Spec) -> list[tuple[str, bytes]]:
    payload = spec.files or {f"share/{spec.name}/README": f"{spec.stem}\n".encode()}
    paths = {
        "paths": [
            {
                "_path": p,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(d).hexdigest(),
                "size_in_bytes": len(d),
            }
            for p, d in sorted(payload.items())
        ],
        "paths_version": 1,
    }
    about = {
        "license": spec.license,
        "summary": spec.summary or f"The {spec.name} package",
        "home": f"https://example.org/{spec.name}",
    }
    members = [
        ("info/about.json", json.dumps(about, sort_keys=True).encode()),
        ("info/files", "".join(f"{p}\n" for p in sorted(payload)).encode()),
        ("info/index.json", json.dumps(spec.index_json(), indent=2, sort_keys=True).encode()),
        ("info/paths.json", json.dumps(paths, sort_keys=True).encode()),
    ]
    if spec.run_exports:
        members.append(("info/run_exports.json", json.dumps(spec.run_exports).encode()))
    return members


def _payload(spec: Spec) -> list[tuple[str, bytes]]:
    payload = spec.files or {f"share/{spec.name}/README": f"{spec.stem}\n".encode()}
    return sorted(payload.items())


def package_bytes(spec: Spec, fmt: str = ".conda") -> bytes:
    """The bytes of ``spec`` as a ``.conda`` or ``.tar.bz2`` file."""
    if fmt == ".tar.bz2":
        return bz2.compress(_tar(_info_members(spec) + _payload(spec)), 9)
    compressor = zstandard.ZstdCompressor(level=3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:

        def add(name: str, data: bytes) -> None:
            entry = zipfile.ZipInfo(name, date_time=(2023, 11, 14, 22, 13, 20))
            archive.writestr(entry, data)

        add("metadata.json", json.dumps({"conda_pkg_format_version": 2}).encode())
        add(f"pkg-{spec.stem}.tar.zst", compressor.compress(_tar(_payload(spec))))
        add(f"info-{spec.stem}.tar.zst", compressor.compress(_tar(_info_members(spec))))
    return buffer.getvalue()


def write_package(directory: Path, spec: Spec, fmt: str = ".conda") -> Path:
    """Write ``spec`` into ``directory/<subdir>/`` and return its path."""
    target = directory / spec.subdir / f"{spec.stem}{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(package_bytes(spec, fmt))
    return target


DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01

# The bundled demo channel (configs/demo-channel), also the upstream of the sync tests.
DEMO = [
    (
        Spec(
            "zlib",
            "1.2.13",
            "h0_0",
            subdir="linux-64",
            license="Zlib",
            timestamp=T0 - 400 * DAY,
            run_exports={"weak": ["zlib >=1.2.13,<1.3.0a0"]},
        ),
        ".tar.bz2",
    ),
    (
        Spec(
            "zlib",
            "1.3.1",
            "h0_0",
            subdir="linux-64",
            license="Zlib",
            timestamp=T0 + 30 * DAY,
            run_exports={"weak": ["zlib >=1.3.1,<1.4.0a0"]},
        ),
        ".conda",
    ),
    (
        Spec(
            "libpng",
            "1.6.43",
            "h1_0",
            subdir="linux-64",
            license="Zlib",
            depends=["zlib >=1.3.1,<1.4.0a0"],
            timestamp=T0 + 40 * DAY,
        ),
        ".conda",
    ),
    (
        Spec(
            "pngtool",
            "2.0",
            "h2_0",
            subdir="linux-64",
            license="MIT",
            depends=["libpng >=1.6", "demo-data"],
            timestamp=T0 + 50 * DAY,
        ),
        ".conda",
    ),
    (
        Spec(
            "pngtool",
            "1.0",
            "h2_0",
            subdir="linux-64",
            license="MIT",
            depends=["libpng >=1.6"],
            timestamp=T0 - 10 * DAY,
        ),
        ".tar.bz2",
    ),
    (
        Spec(
            "gpltool",
            "1.0",
            "h3_0",
            subdir="linux-64",
            license="GPL-3.0-only",
            timestamp=T0 + 60 * DAY,
        ),
        ".conda",
    ),
    (
        Spec(
            "demo-data", "2024.1", "0", noarch="generic", license="CC0-1.0", timestamp=T0 + 20 * DAY
        ),
        ".conda",
    ),
    (
        Spec(
            "demo-data-dbg",
            "2024.1",
            "0",
            noarch="generic",
            license="CC0-1.0",
            timestamp=T0 + 20 * DAY,
        ),
        ".conda",
    ),
]
