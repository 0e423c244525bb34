"""rattler's conda types, each loaded from its own submodule, not through ``import rattler``.

rattler's package ``__init__`` imports every submodule it has: the solver, sigstore,
the installer, the networking client, repodata's gateway. A sync needs conda's
version ordering (records, channeldata, pages) and, with filters, match specs; the
rest cost 25-40 ms of every sync's start-up, on one core while the other idled. So the
package is registered here with only its path: its submodules load as they are asked
for, and the first name asked of the package itself runs its real ``__init__`` in the
same module, so that ``import rattler`` anywhere else (the lock-file reader, tests)
still sees the whole package. A release whose submodules ask the package itself for
names (py-rattler 0.22's) is imported whole instead.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import Any


def _package_without_init() -> bool:
    """Whether the package was registered here (not if imported already)."""
    if "rattler" in sys.modules:
        return False
    spec = importlib.util.find_spec("rattler")
    if spec is None or spec.loader is None:
        return False  # not installed: the imports below say so
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)
    whole = threading.Lock()

    def load_whole(name: str) -> Any:
        with whole:  # once, in whichever thread asks first
            if package.__dict__.pop("__getattr__", None) is not None:
                try:
                    loader.exec_module(package)
                except BaseException:
                    sys.modules.pop("rattler", None)  # as a failed import leaves it
                    raise
        return getattr(package, name)

    package.__dict__["__getattr__"] = load_whole
    sys.modules["rattler"] = package
    return True


def _forget() -> None:
    for name in [n for n in sys.modules if n == "rattler" or n.startswith("rattler.")]:
        del sys.modules[name]


if _package_without_init():
    try:  # the three submodules alone
        import rattler.exceptions
        import rattler.match_spec
        import rattler.version  # noqa: F401
    except ImportError:  # a rattler whose submodules ask the package for names: whole
        _forget()
from rattler.exceptions import InvalidVersionError  # noqa: E402
from rattler.match_spec import MatchSpec  # noqa: E402
from rattler.version import Version  # noqa: E402


def package_record(name: str, version: str, build: str, build_number: int, subdir: str) -> Any:
    """A record as rattler matches specs against it; only a spec filter needs one, so
    the whole package is loaded here, in its own order."""
    import rattler

    build_string = getattr(rattler, "BuildString", None)  # py-rattler 0.28 on
    built: Any = build_string(build) if build_string else build
    return rattler.PackageRecord(
        name=name, version=version, build=built, build_number=build_number, subdir=subdir
    )


__all__ = ["InvalidVersionError", "MatchSpec", "Version", "package_record"]
