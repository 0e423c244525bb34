"""rattler's conda types, each loaded from its own submodule, not through ``import rattler``.

rattler's package ``__init__`` imports every submodule it has: the solver, sigstore,
the installer, the networking client, repodata's gateway. A sync needs conda's
version ordering (records, channeldata, pages) and, with filters, match specs; the
rest cost 25-40 ms of every sync's start-up, on one core while the other idled. So the
package is registered here with only its path: its submodules load as they are asked
for, and the first name asked of the package itself runs its real ``__init__`` in the
same module, so that ``import rattler`` anywhere else (the lock-file reader, tests)
still sees the whole package.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import TYPE_CHECKING, Any


def _package_without_init() -> None:
    if "rattler" in sys.modules:
        return
    spec = importlib.util.find_spec("rattler")
    if spec is None or spec.loader is None:
        return  # not installed: the imports below say so
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)
    whole = threading.Lock()

    def load_whole(name: str) -> Any:
        with whole:  # once, in whichever thread asks first
            if package.__dict__.pop("__getattr__", None) is not None:
                try:
                    loader.exec_module(package)
                except BaseException:
                    del sys.modules["rattler"]  # as a failed import leaves it
                    raise
        return getattr(package, name)

    package.__dict__["__getattr__"] = load_whole
    sys.modules["rattler"] = package


_package_without_init()

from rattler.exceptions import InvalidVersionError  # noqa: E402
from rattler.match_spec import MatchSpec  # noqa: E402
from rattler.version import Version  # noqa: E402

if TYPE_CHECKING:
    from rattler import PackageRecord


def package_record(
    name: str, version: str, build: str, build_number: int, subdir: str
) -> PackageRecord:
    """A record as rattler matches specs against it (its repodata module is the largest
    part of rattler's import, and only a spec filter needs it)."""
    from rattler.package import BuildString
    from rattler.repo_data import PackageRecord

    return PackageRecord(
        name=name,
        version=version,
        build=BuildString(build),
        build_number=build_number,
        subdir=subdir,
    )


__all__ = ["InvalidVersionError", "MatchSpec", "Version", "package_record"]
