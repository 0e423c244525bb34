"""Each filter rule, with conda's own match-spec and version semantics."""

from __future__ import annotations

import datetime as dt
from typing import Any

from conda_ferry.mirror.filters import Filters, Selector

DAY = 86_400_000


def rec(
    name: str,
    version: str,
    build: str = "0",
    subdir: str = "linux-64",
    depends: tuple[str, ...] = (),
    license: str = "MIT",
    timestamp: int = 1_700_000_000_000,
    size: int = 1000,
) -> tuple[str, dict[str, Any]]:
    return f"{name}-{version}-{build}.conda", {
        "name": name,
        "version": version,
        "build": build,
        "build_number": 0,
        "subdir": subdir,
        "depends": list(depends),
        "license": license,
        "timestamp": timestamp,
        "size": size,
    }


def channel(*records: tuple[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {"linux-64": {}, "noarch": {}}
    for filename, record in records:
        out[record["subdir"]][filename] = record
    return out


def filters(**keys: Any) -> Filters:
    """Filters from keys as a job's ``filters:`` holds them (lists, not tuples)."""
    return Filters.parse({k: list(v) if isinstance(v, tuple) else v for k, v in keys.items()})


def kept(filters: Filters, records: dict[str, dict[str, dict[str, Any]]]) -> set[str]:
    selection = Selector(filters).select(records)
    return {fn for section in selection.kept.values() for fn in section}


RECORDS = channel(
    rec("python", "3.10.14"),
    rec("python", "3.11.0"),
    rec("python", "3.11.9"),
    rec("python", "3.12.1"),
    rec("numpy", "1.26.4", depends=("python >=3.11,<3.12",)),
    rec("numpy-dbg", "1.26.4"),
    rec("pandas", "2.2.1", depends=("numpy >=1.26",)),
    rec("pandas", "1.5.3"),
    rec("gplthing", "1.0", license="GPL-3.0-or-later"),
    rec("nolicense", "1.0", license=""),
    rec("tzdata", "2024a", subdir="noarch"),
    rec("pyhelper", "1.0", subdir="noarch", depends=("python >=3.12",)),
)


def test_no_include_keeps_everything() -> None:
    assert len(kept(filters(), RECORDS)) == 12


def test_include_specs_use_conda_semantics() -> None:
    result = kept(filters(include=("python >=3.11", "pandas 2.*")), RECORDS)
    assert result == {
        "python-3.11.0-0.conda",
        "python-3.11.9-0.conda",
        "python-3.12.1-0.conda",
        "pandas-2.2.1-0.conda",
    }


def test_exclude_specs_and_name_globs() -> None:
    result = kept(filters(exclude=("*-dbg", "python 3.11.0")), RECORDS)
    assert "numpy-dbg-1.26.4-0.conda" not in result
    assert "python-3.11.0-0.conda" not in result
    assert "python-3.11.9-0.conda" in result


def test_licenses_allow_and_deny() -> None:
    denied = kept(filters(licenses={"deny": ["GPL-3.0*"]}), RECORDS)
    assert "gplthing-1.0-0.conda" not in denied and "nolicense-1.0-0.conda" in denied
    allowed = kept(filters(licenses={"allow": ["MIT"]}), RECORDS)
    assert "nolicense-1.0-0.conda" not in allowed and "gplthing-1.0-0.conda" not in allowed
    assert "pandas-2.2.1-0.conda" in allowed


def test_latest_n_versions_by_conda_ordering() -> None:
    result = kept(filters(include=("python",), latest=2), RECORDS)
    assert result == {"python-3.11.9-0.conda", "python-3.12.1-0.conda"}
    ordering = channel(
        rec("x", "1.0a1"), rec("x", "1.0"), rec("x", "1.0.post1"), rec("x", "1.0rc2")
    )
    assert kept(filters(latest=1), ordering) == {"x-1.0.post1-0.conda"}


def test_date_window_and_max_size() -> None:
    records = channel(
        rec("a", "1", timestamp=1_704_067_200_000 - DAY),
        rec("b", "1", timestamp=1_704_067_200_000 + DAY),
        rec("c", "1", size=10**9, timestamp=1_704_067_200_000 + 2 * DAY),
    )
    assert kept(filters(after=dt.date(2024, 1, 1)), records) == {"b-1-0.conda", "c-1-0.conda"}
    assert kept(filters(before=dt.date(2024, 1, 1)), records) == {"a-1-0.conda"}
    assert kept(filters(max_size=10**6), records) == {"a-1-0.conda", "b-1-0.conda"}


def test_dependency_closure_is_transitive_and_reports_removals() -> None:
    chosen = filters(include=("pandas 2.*",), dependencies=True, exclude=("python 3.11.0",))
    selection = Selector(chosen).select(RECORDS)
    result = {fn for section in selection.kept.values() for fn in section}
    assert result == {"pandas-2.2.1-0.conda", "numpy-1.26.4-0.conda", "python-3.11.9-0.conda"}
    assert any(
        "python-3.11.0-0.conda" in note and "excluded" in note
        for note in selection.dropped_dependencies
    )
    why = selection.explain("python", RECORDS)
    assert any(
        line.startswith("keep linux-64/python-3.11.9") and "dependency of" in line for line in why
    )


def test_noarch_records_pull_dependencies_from_every_subdir() -> None:
    result = kept(filters(include=("pyhelper",), dependencies=True), RECORDS)
    assert result == {"pyhelper-1.0-0.conda", "python-3.12.1-0.conda"}
