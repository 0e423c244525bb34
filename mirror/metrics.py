"""``--metrics FILE``: a sync's outcome in the Prometheus textfile-collector format
(node_exporter's ``--collector.textfile.directory``), so the monitoring enterprises
already run can alert on a mirror that stopped updating.

The file is read back and merged: a failed run must not erase when the last good
one was, and one job file may hold several jobs' series.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

HELP = {
    "ferry_last_success_timestamp_seconds": "When the subdir last synced without failure.",
    "ferry_last_run_timestamp_seconds": "When the job last finished, however it ended.",
    "ferry_last_exit_code": "The exit status of the job's last run.",
    "ferry_run_duration_seconds": "How long the job's last run took.",
    "ferry_packages_transferred": "Packages the subdir's last run fetched.",
    "ferry_bytes_transferred": "Bytes the subdir's last run fetched.",
    "ferry_records_published": "Records the subdir's repodata.json lists.",
    "ferry_upstream_age_seconds": "Age of upstream's repodata (Last-Modified) at the last run.",
}
_SAMPLE = re.compile(r"^(ferry_[a-z_]+)\{([^}]*)\}\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_ESCAPED = re.compile(r"\\(.)")

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _read(path: Path) -> Series:
    series: Series = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return series
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match:
            found = _LABEL.findall(match.group(2))
            labels = tuple(sorted((k, _unescape(v)) for k, v in found))
            try:
                series[(match.group(1), labels)] = float(match.group(3))
            except ValueError:
                continue
    return series


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return _ESCAPED.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _label(text: str) -> str:
    """A label value is UTF-8 text: bytes of a job file's name that are not (as the
    command line gave them) are written as ferry's error lines write them, ``\\udcff``."""
    return text.encode("utf-8", "backslashreplace").decode()


def _render(series: Series) -> str:
    lines: list[str] = []
    for name, help_text in HELP.items():
        samples = sorted((labels, v) for (n, labels), v in series.items() if n == name)
        if not samples:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {value:.17g}")
    return "\n".join(lines) + "\n"


def update(path: Path, job: str, report: dict[str, Any], exit_code: int, started: float) -> str:
    """The new file's text: this run's series replace the same series of earlier
    runs, the rest is kept (a subdir's last success moves forward only with one)."""
    now, job = time.time(), _label(job)
    series = _read(path)
    run = (("job", job),)
    series[("ferry_last_run_timestamp_seconds", run)] = now
    series[("ferry_last_exit_code", run)] = exit_code
    series[("ferry_run_duration_seconds", run)] = now - started
    for sub in report.get("subdirs", []):
        labels = (("job", job), ("subdir", sub["subdir"]))
        if sub["status"] in ("synced", "up to date"):
            series[("ferry_last_success_timestamp_seconds", labels)] = now
        series[("ferry_packages_transferred", labels)] = len(sub["files"].get("added", []))
        series[("ferry_bytes_transferred", labels)] = sub["bytes"]
        if sub.get("published") is not None:
            series[("ferry_records_published", labels)] = sub["published"]
        if sub.get("upstream_modified"):
            series[("ferry_upstream_age_seconds", labels)] = now - sub["upstream_modified"]
    return _render(series)
