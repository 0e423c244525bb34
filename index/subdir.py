"""What one subdir of a channel holds now, read once and handed on.

A writer lists a subdir and reads its ``repodata.json`` once; the plan, the indexer
and the publisher all work from this view. On an S3 subdir of 200,000 files every
listing is hundreds of requests, so reading it twice is a cost worth avoiding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from conda_ferry.gateways import FileInfo, Gateway, NotFound, is_temp

from . import compact
from .records import EXTENSIONS


class SubdirView(msgspec.Struct):
    subdir: str
    packages: dict[str, FileInfo] = {}  # package files by name
    temps: list[FileInfo] = []  # a killed run's atomic writes
    repodata_json: bytes | None = None  # the published repodata.json, as served
    published: dict[str, Mapping[str, Any]] = {}  # its records
    unreadable: bool = False  # repodata.json is there but not a repodata document
    names: set[str] = set()  # every other file directly in the subdir

    @classmethod
    def read(cls, gateway: Gateway, subdir: str) -> SubdirView:
        view = cls(subdir)
        for info in gateway.files(subdir):
            name = info.name  # derived from the path each time: once a file
            if is_temp(name):
                view.temps.append(info)
            elif name.endswith(EXTENSIONS) and not name.startswith("."):
                view.packages[name] = info
            else:
                view.names.add(name)
        try:
            view.repodata_json = gateway.read_bytes(f"{subdir}/repodata.json")
            view.published = compact.published(view.repodata_json)
        except NotFound:
            pass
        except ValueError:  # republished from scratch, never trusted
            view.published, view.unreadable = {}, True
        return view

    @property
    def present(self) -> dict[str, int]:
        """Package file name -> size."""
        return {name: info.size for name, info in self.packages.items()}

    def landed(self, info: FileInfo) -> None:
        """A package this run wrote: the view stays true without listing again."""
        self.packages[info.name] = info
