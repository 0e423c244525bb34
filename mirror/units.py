"""How numbers read in every message: one size style, real plurals."""

from __future__ import annotations


def human_size(size: int) -> str:
    """Bytes in binary units, one decimal past KiB: ``512 B``, ``3.1 KiB``, ``57.7 MiB``."""
    if size < 0:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``3 files``; ``many`` where adding an s is wrong."""
    return f"{count} {word if count == 1 else many or word + 's'}"
